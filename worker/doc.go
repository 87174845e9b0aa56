// Package worker is the node agent: it joins a cluster (Join: the node's
// side of the CA handshake), keeps a session with the leader's dispatcher,
// receives its task assignments, drives each task's container through an
// exec.Executor, checks the health of those that have a health check (when
// the executor can run one, exec.Prober), and reports every state and
// health change back. It owns
// the node's containers (found by label, adopted after a restart, removed
// when no longer assigned), imports the image tarballs the managers
// distribute, and owns nothing in the managers' state. Neither a silent
// manager (the session moves to another within the heartbeat grace) nor an
// unreachable runtime (verbs are retried, nothing is reported) ends a
// task. It keeps its assignments on disk, sealed under a key it is given
// (Config.CacheKey), to watch its tasks after a restart before any
// manager answers.
package worker
