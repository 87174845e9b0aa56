package ca

import (
	"fmt"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// Founding is a new cluster's identity, made by `shoald init` before
// anything is stored: the cluster object with its root CA and join tokens,
// the first manager's node object and credentials, and the admin
// credentials for shoalctl --host. The node keeps both credentials on disk
// and gives Cluster and Node to manager.Init, which stores them as the
// cluster's first raft entry.
type Founding struct {
	Cluster *api.Cluster
	Node    *api.Node
	// Credentials are the first manager's: its key, its certificate and
	// the root CA certificate.
	Credentials identity.Credentials
	Admin       identity.Credentials
}

// Found makes the identity of a new cluster whose first manager is nodeID,
// reachable by the others at addr and described by desc. It stores and
// writes nothing.
func Found(nodeID, addr string, desc *api.NodeDescription) (*Founding, error) {
	clusterID := api.NewID()
	rootPB, err := identity.NewRootCA(clusterID)
	if err != nil {
		return nil, err
	}
	root, err := identity.ParseRootCA(rootPB)
	if err != nil {
		return nil, err
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	certPEM, cert, err := root.Issue(csrPEM, nodeID, api.NodeRole_NODE_ROLE_MANAGER, 0)
	if err != nil {
		return nil, fmt.Errorf("first manager's certificate: %w", err)
	}
	adminKey, adminCSR, err := identity.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	adminCert, adminX509, err := root.IssueAdminCSR(adminCSR, identity.DefaultAdminName, 0)
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	tokens, err := identity.NewJoinTokens(rootPB.GetDigest())
	if err != nil {
		return nil, err
	}
	return &Founding{
		Cluster: &api.Cluster{
			Id:         clusterID,
			Spec:       &api.ClusterSpec{Name: "shoal"},
			RootCa:     rootPB,
			JoinTokens: tokens,
			// The admin certificate is accepted because it is recorded.
			AdminCertificates: []*api.AdminCertificate{identity.AdminRecord(adminX509)},
		},
		Node: &api.Node{
			Id:            nodeID,
			Role:          api.NodeRole_NODE_ROLE_MANAGER,
			Spec:          &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
			Description:   desc,
			Status:        &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: addr},
			ManagerStatus: &api.ManagerStatus{RaftAddr: addr, Leader: true, Reachable: true},
			Certificate:   certRecord(cert, api.NodeRole_NODE_ROLE_MANAGER, root, &api.Cluster{RootCa: rootPB}),
		},
		Credentials: identity.Credentials{CACertPEM: rootPB.GetCertPem(), CertPEM: certPEM, KeyPEM: keyPEM},
		Admin:       identity.Credentials{CACertPEM: rootPB.GetCertPem(), CertPEM: adminCert, KeyPEM: adminKey},
	}, nil
}
