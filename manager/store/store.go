package store

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	tableCluster = "clusters"
	tableNode    = "nodes"
	tableService = "services"
	tableTask    = "tasks"
	tableImage   = "images"
	tableNetwork = "networks"

	indexID      = "id"
	indexName    = "name"
	indexService = "service"
	indexNode    = "node"
)

var (
	// ErrNotFound: the object an action names does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExist: an object with the same id or unique name exists.
	ErrExist = errors.New("already exists")
	// ErrSequenceConflict: an update was built from an old version of the
	// object. Read it again and retry.
	ErrSequenceConflict = errors.New("update out of sequence")
	// ErrInvalidAction: the action is malformed (no object, no id, no kind).
	ErrInvalidAction = errors.New("invalid store action")
)

func schema() *memdb.DBSchema {
	id := &memdb.IndexSchema{Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Id"}}
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableCluster: {Name: tableCluster, Indexes: map[string]*memdb.IndexSchema{indexID: id}},
		tableNode:    {Name: tableNode, Indexes: map[string]*memdb.IndexSchema{indexID: id}},
		tableImage:   {Name: tableImage, Indexes: map[string]*memdb.IndexSchema{indexID: id}},
		tableService: {Name: tableService, Indexes: map[string]*memdb.IndexSchema{
			indexID:   id,
			indexName: {Name: indexName, Unique: true, Indexer: serviceNameIndex{}},
		}},
		tableNetwork: {Name: tableNetwork, Indexes: map[string]*memdb.IndexSchema{
			indexID:   id,
			indexName: {Name: indexName, Unique: true, Indexer: networkNameIndex{}},
		}},
		tableTask: {Name: tableTask, Indexes: map[string]*memdb.IndexSchema{
			indexID:      id,
			indexService: {Name: indexService, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "ServiceId"}},
			indexNode:    {Name: indexNode, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "NodeId"}},
		}},
	}}
}

// serviceNameIndex indexes services by spec.name, which memdb's reflection
// indexers cannot reach.
type serviceNameIndex struct{}

func (serviceNameIndex) FromObject(obj any) (bool, []byte, error) {
	s, ok := obj.(*api.Service)
	if !ok || s.GetSpec().GetName() == "" {
		return false, nil, nil
	}
	return true, []byte(s.GetSpec().GetName() + "\x00"), nil
}

func (serviceNameIndex) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("service name index takes one argument")
	}
	name, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("service name index: argument must be a string, got %T", args[0])
	}
	return []byte(name + "\x00"), nil
}

// networkNameIndex indexes networks by spec.name.
type networkNameIndex struct{}

func (networkNameIndex) FromObject(obj any) (bool, []byte, error) {
	n, ok := obj.(*api.Network)
	if !ok || n.GetSpec().GetName() == "" {
		return false, nil, nil
	}
	return true, []byte(n.GetSpec().GetName() + "\x00"), nil
}

func (networkNameIndex) FromArgs(args ...any) ([]byte, error) {
	return serviceNameIndex{}.FromArgs(args...)
}

// uniqueName returns the name an object must hold alone in its table, or
// "" when the table has no unique name.
func uniqueName(obj object) string {
	switch v := obj.(type) {
	case *api.Service:
		return v.GetSpec().GetName()
	case *api.Network:
		return v.GetSpec().GetName()
	}
	return ""
}

// Store holds the replicated state. Apply is called by one goroutine (the
// raft FSM); reads may come from any number.
type Store struct {
	// db is swapped whole by Restore; readers load it once per View.
	db atomic.Pointer[memdb.MemDB]

	mu    sync.Mutex // guards subs and index
	subs  map[*Subscription]struct{}
	index uint64
}

// newDB returns an empty database without memdb's watch tracking: a
// snapshot of a fresh database is one (memdb tracks mutations only on its
// primary). The store has its own change feed, and tracking costs a third
// of the time of a large command.
func newDB() (*memdb.MemDB, error) {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return nil, err
	}
	return db.Snapshot(), nil
}

// New returns an empty store.
func New() *Store {
	db, err := newDB()
	if err != nil {
		panic(fmt.Sprintf("store schema: %v", err)) // the schema is a constant
	}
	s := &Store{subs: make(map[*Subscription]struct{})}
	s.db.Store(db)
	return s
}

// Index is the raft index of the last applied command.
func (s *Store) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// View runs fn over a consistent, read-only snapshot of the store.
func (s *Store) View(fn func(tx ReadTx)) {
	txn := s.db.Load().Txn(false)
	defer txn.Abort()
	fn(ReadTx{txn: txn})
}

// Apply applies a command's actions at raft index idx, all or none. It
// returns the first action's error, wrapped with what it concerned. The
// store takes ownership of the command's objects (the FSM decodes a fresh
// command for every entry): callers must not touch them afterwards.
func (s *Store) Apply(idx uint64, cmd *api.Command) error {
	txn := s.db.Load().Txn(true)
	events := make([]Event, 0, len(cmd.GetActions()))
	for i, a := range cmd.GetActions() {
		ev, err := applyAction(txn, idx, a)
		if err != nil {
			txn.Abort()
			s.setIndex(idx)
			return fmt.Errorf("action %d: %w", i, err)
		}
		events = append(events, ev)
	}
	txn.Commit()
	s.setIndex(idx)
	s.publish(Change{Index: idx, Events: events})
	return nil
}

func (s *Store) setIndex(idx uint64) {
	s.mu.Lock()
	if idx > s.index {
		s.index = idx
	}
	s.mu.Unlock()
}

func applyAction(txn *memdb.Txn, idx uint64, a *api.StoreAction) (Event, error) {
	table, obj, id := target(a)
	if obj == nil || id == "" {
		return Event{}, fmt.Errorf("%w: no object or no id", ErrInvalidAction)
	}
	raw, err := txn.First(table, indexID, id)
	if err != nil {
		return Event{}, fmt.Errorf("look up %s %s: %w", kindName(table), id, err)
	}
	var cur object
	if raw != nil {
		cur = raw.(object)
	}
	ev := Event{Kind: a.GetKind(), Object: obj}
	switch a.GetKind() {
	case api.StoreActionKind_STORE_ACTION_KIND_CREATE:
		if cur != nil {
			return Event{}, fmt.Errorf("%s %s: %w", kindName(table), id, ErrExist)
		}
		if name := uniqueName(obj); name != "" {
			if other, _ := txn.First(table, indexName, name); other != nil {
				return Event{}, fmt.Errorf("%s name %q: %w", kindName(table), name, ErrExist)
			}
		}
		if err := hostnameFree(txn, nil, obj); err != nil {
			return Event{}, err
		}
		meta := ensureMeta(obj)
		meta.Version = idx
		if meta.UpdatedAt == nil {
			meta.UpdatedAt = meta.CreatedAt
		}
	case api.StoreActionKind_STORE_ACTION_KIND_UPDATE:
		if cur == nil {
			return Event{}, fmt.Errorf("%s %s: %w", kindName(table), id, ErrNotFound)
		}
		if have, want := cur.GetMeta().GetVersion(), obj.GetMeta().GetVersion(); have != want {
			return Event{}, fmt.Errorf("%s %s at version %d, update built on %d: %w", kindName(table), id, have, want, ErrSequenceConflict)
		}
		if name := uniqueName(obj); name != "" {
			if other, _ := txn.First(table, indexName, name); other != nil && other.(object).GetId() != id {
				return Event{}, fmt.Errorf("%s name %q: %w", kindName(table), name, ErrExist)
			}
		}
		if err := hostnameFree(txn, cur, obj); err != nil {
			return Event{}, err
		}
		meta := ensureMeta(obj)
		meta.Version = idx
		meta.CreatedAt = cur.GetMeta().GetCreatedAt()
		ev.Old = cur
	case api.StoreActionKind_STORE_ACTION_KIND_REMOVE:
		if cur == nil {
			return Event{}, fmt.Errorf("%s %s: %w", kindName(table), id, ErrNotFound)
		}
		if err := txn.Delete(table, cur); err != nil {
			return Event{}, fmt.Errorf("remove %s %s: %w", kindName(table), id, err)
		}
		ev.Object = cur
		return ev, nil
	default:
		return Event{}, fmt.Errorf("%w: kind %v", ErrInvalidAction, a.GetKind())
	}
	if err := txn.Insert(table, obj); err != nil {
		return Event{}, fmt.Errorf("write %s %s: %w", kindName(table), id, err)
	}
	ev.Object = obj
	return ev, nil
}

// hostnameFree refuses a node that takes a hostname another node holds:
// placement constraints and `node` commands name nodes by hostname, so a
// node claiming another's name would attract its pinned tasks. Only a
// create or a change of hostname is checked, so that nodes stored before
// the rule (or restored from such a snapshot) can still be updated.
func hostnameFree(txn *memdb.Txn, cur, obj object) error {
	n, ok := obj.(*api.Node)
	if !ok || n.GetDescription().GetHostname() == "" {
		return nil
	}
	if old, ok := cur.(*api.Node); ok && strings.EqualFold(old.GetDescription().GetHostname(), n.GetDescription().GetHostname()) {
		return nil
	}
	if other := NodeByHostname(ReadTx{txn: txn}, n.GetDescription().GetHostname(), n.GetId()); other != nil {
		return fmt.Errorf("node hostname %q is held by node %s: %w", n.GetDescription().GetHostname(), other.GetId(), ErrExist)
	}
	return nil
}

// object is what every stored message has.
type object interface {
	proto.Message
	GetId() string
	GetMeta() *api.Meta
}

// ensureMeta returns the object's meta, creating it when absent. Every
// stored message has a "meta" field; protoreflect reaches it for all of
// them at once.
func ensureMeta(o object) *api.Meta {
	m := o.ProtoReflect()
	fd := m.Descriptor().Fields().ByName("meta")
	if fd == nil {
		panic(fmt.Sprintf("store: %T has no meta field", o))
	}
	return m.Mutable(fd).Message().Interface().(*api.Meta)
}

func target(a *api.StoreAction) (table string, obj object, id string) {
	switch t := a.GetTarget().(type) {
	case *api.StoreAction_Node:
		if t.Node != nil {
			return tableNode, t.Node, t.Node.GetId()
		}
	case *api.StoreAction_Service:
		if t.Service != nil {
			return tableService, t.Service, t.Service.GetId()
		}
	case *api.StoreAction_Task:
		if t.Task != nil {
			return tableTask, t.Task, t.Task.GetId()
		}
	case *api.StoreAction_Cluster:
		if t.Cluster != nil {
			return tableCluster, t.Cluster, t.Cluster.GetId()
		}
	case *api.StoreAction_Image:
		if t.Image != nil {
			return tableImage, t.Image, t.Image.GetId()
		}
	case *api.StoreAction_Network:
		if t.Network != nil {
			return tableNetwork, t.Network, t.Network.GetId()
		}
	}
	return "", nil, ""
}

func kindName(table string) string {
	return table[:len(table)-1]
}

// Snapshot returns the whole store at this moment. The objects are shared:
// do not modify them.
func (s *Store) Snapshot() *api.StoreSnapshot {
	snap := &api.StoreSnapshot{}
	s.View(func(tx ReadTx) {
		snap.Clusters = tx.Clusters()
		snap.Nodes = tx.Nodes()
		snap.Services = tx.Services()
		snap.Tasks = tx.Tasks()
		snap.Images = tx.Images()
		snap.Networks = tx.Networks()
	})
	return snap
}

// Restore replaces the store's contents with a snapshot's. Subscribers get
// a Change with Reset set, and must re-read everything.
func (s *Store) Restore(idx uint64, snap *api.StoreSnapshot) error {
	db, err := newDB()
	if err != nil {
		return err
	}
	txn := db.Txn(true)
	insert := func(table string, o object) error {
		if err := txn.Insert(table, o); err != nil {
			return fmt.Errorf("restore %s %s: %w", kindName(table), o.GetId(), err)
		}
		return nil
	}
	for _, o := range snap.GetClusters() {
		if err := insert(tableCluster, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.GetNodes() {
		if err := insert(tableNode, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.GetServices() {
		if err := insert(tableService, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.GetTasks() {
		if err := insert(tableTask, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.GetImages() {
		if err := insert(tableImage, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.GetNetworks() {
		if err := insert(tableNetwork, o); err != nil {
			txn.Abort()
			return err
		}
	}
	txn.Commit()
	s.db.Store(db)
	s.setIndex(idx)
	s.publish(Change{Index: idx, Reset: true})
	return nil
}
