// Package orchestrator holds the replicated orchestrator's decision logic:
// given a service and all of its tasks, Reconcile computes the Plan (tasks
// to create, desired-state changes, tasks to delete, and the service's
// rolling-update progress) that brings the tasks to the service's spec.
//
// It owns only decisions. It does not read or write the store, talk to raft,
// start goroutines or keep state between calls: the manager's controller
// loop feeds it a consistent snapshot, applies the Plan in one transaction
// and calls it again when the store changes or when Plan.Wake passes.
// Reconcile on the result of applying its own Plan returns an empty Plan
// (but for a rollout, whose completion the plan after the one that settled
// its last slot records), so calling it too often is harmless.
//
// The model follows Swarm's:
//
//   - A replicated service has replicas slots. A task is one run of a slot
//     and is never reused: a restart is a new task in the same slot with
//     restart_count one higher. A slot's current task is its newest task
//     whose desired state is RUNNING.
//   - When the current task ends (or its node is DOWN) it gets desired state
//     SHUTDOWN and, if the restart policy allows, a replacement. Quick
//     failures back off exponentially (see RestartDelay); the replacement
//     waits in NEW with not_before set, and the wiring promotes it to
//     PENDING once not_before passes.
//   - Scaling down keeps the slots whose tasks are furthest along (running
//     first) and, among equals, the lowest slot numbers, so slot numbers
//     can become sparse (web.1, web.4) exactly as in Swarm. Scaling up
//     fills the lowest free slot numbers.
//   - A slot whose restart policy says no more (condition NONE or
//     ON_FAILURE after a clean exit, or max_attempts reached, within the
//     policy's window when it has one) keeps its ended task as its last
//     word and still counts towards replicas; a spec change (`service
//     update --force` bumps spec_version) gives it a fresh task.
//   - Tasks taken out of service before they ever got a node are deleted
//     at once: nothing would ever report on them.
//   - Ended tasks stay as per-slot history (TaskHistoryLimit per slot) so
//     users can see why a slot restarted.
//   - A change of the task template (spec_version) is rolled out by the
//     rolling updater (update.go), in the same Plan: it takes the slots
//     that a task of another template serves, parallelism at a time,
//     stop-first or start-first, watches each new task for the monitor
//     period and takes the failure action (pause, continue, rollback)
//     when too many fail. Its progress is the service's update_status,
//     which the Plan carries (Plan.Service), so that it is in raft with
//     the tasks and a new leader goes on where the old one stopped.
//     Slots whose task does not serve are replaced at once: there is
//     nothing to keep up. Respec and Rollback are the spec bookkeeping
//     of updates and rollbacks that the control API and the failure
//     action share.
//
// Global services and global jobs have a task per eligible node instead
// of slots (global.go: slot 0, made for its node, kept while the node is
// down, moved off a drained one and back); replicated jobs have slots that
// each need one task to exit 0, started within max_concurrent (job.go).
// A job's task that completed is never run again.
//
// It imports only the API types and, for a global service's eligible
// nodes, the scheduler's constraint parser: the nodes the orchestrator
// makes tasks for are those whose constraints the scheduler will pass.
//
// Rolling updates pace replicated services only: a task-spec change of a
// global service or a job replaces its tasks at once.
package orchestrator
