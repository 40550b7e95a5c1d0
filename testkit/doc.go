// Package testkit is what the integration tests and the benchmark share:
// a private containerd (its own root, state, sockets and log under one
// directory in /run, with a chosen binary answering to
// containerd-shim-runc-v2 on its PATH) and the host inspection their
// teardown needs: mounts, cgroups, shim processes, runc containers.
//
// It is its own Go module, like its two users, so that the shim's go.mod
// stays free of containerd's client.
package testkit
