package testcluster

// NamespaceContainers lists the containers of any containerd namespace,
// with the task labels shoald puts on them and their task's state: for
// tests that look at nodes this package did not start (lab nodes, one
// containerd namespace each).
func NamespaceContainers(namespace string) ([]Container, error) {
	return listContainers(namespace)
}
