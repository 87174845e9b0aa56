// Package servicecheck holds the checks end-to-end tests make of a service
// as a user sees it, on a lab (e2e) and on virtual machines (e2e/vm) alike:
// its tasks run, each with its container on its node and no other
// container (Converged); the routing mesh answered every request, from
// exactly the running tasks (ServedOnlyBy); a task on its network finds
// it by name and reaches every task through its VIP (Discovery). It also
// reads shoalctl's --format json listings (DecodeLines).
//
// The tests bring the transport (a lab's namespaces, ssh to a VM) and the
// listings; the checks are the same. It is test support: only _test files
// import it.
package servicecheck
