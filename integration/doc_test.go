// Package integration_test proves l4nft's data plane with real packets:
// every test builds throwaway network namespaces (package testbed), installs
// a ruleset in the balancer namespace and pushes TCP, UDP or SCTP traffic
// from a client namespace through the kernel to backend namespaces whose
// servers answer with their own name.
//
// Run as root: go test ./integration/...
package integration_test
