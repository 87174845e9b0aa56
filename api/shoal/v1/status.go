package shoalv1

// MaxStatusUpdates is how many updates one UpdateTaskStatus call may
// carry; the managers refuse a larger call. A node sends at most one
// update per task (the newest), so only a node with more tasks than this
// splits its reports.
const MaxStatusUpdates = 4096
