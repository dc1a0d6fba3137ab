// Package testbed is the test-side face of agent/netlab: it re-exports
// netlab's namespaces, topology, clients and answering servers under their
// old names, and adds what only tests need - ForTest and NamespaceForTest,
// which tie a topology or a namespace to a test's lifetime.
//
// See agent/netlab for the topology, the address plan and the traffic
// protocol. New code outside the test tree must import agent/netlab, never
// this package.
package testbed

import (
	"context"
	"time"

	"github.com/l4nft/l4nft/agent/netlab"
)

// Types of agent/netlab.
type (
	Namespace    = netlab.Namespace
	Options      = netlab.Options
	Topology     = netlab.Topology
	Balancer     = netlab.Balancer
	Client       = netlab.Client
	Backend      = netlab.Backend
	Conn         = netlab.Conn
	Reply        = netlab.Reply
	SpreadResult = netlab.SpreadResult
)

// Constants of agent/netlab.
const (
	ClientPrefix4  = netlab.ClientPrefix4
	ClientPrefix6  = netlab.ClientPrefix6
	BackendPrefix4 = netlab.BackendPrefix4
	BackendPrefix6 = netlab.BackendPrefix6
	VIPPrefix4     = netlab.VIPPrefix4
	VIPPrefix6     = netlab.VIPPrefix6

	MaxClients  = netlab.MaxClients
	MaxBackends = netlab.MaxBackends

	ClientBridge  = netlab.ClientBridge
	BackendBridge = netlab.BackendBridge

	DefaultTimeout = netlab.DefaultTimeout
	BindMountDir   = netlab.BindMountDir
)

// ErrClosed is netlab.ErrClosed, the same value, so errors.Is matches either.
var ErrClosed = netlab.ErrClosed

// New is netlab.New.
func New(ctx context.Context, opts Options) (*Topology, error) { return netlab.New(ctx, opts) }

// NewNamespace is netlab.NewNamespace.
func NewNamespace(name, netnsName string) (*Namespace, error) {
	return netlab.NewNamespace(name, netnsName)
}

// PortRange is netlab.PortRange.
func PortRange(first, last uint16) []uint16 { return netlab.PortRange(first, last) }

// Eventually is netlab.Eventually.
func Eventually(ctx context.Context, interval time.Duration, cond func(context.Context) error) error {
	return netlab.Eventually(ctx, interval, cond)
}
