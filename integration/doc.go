// Package integration drives the shim under test through a private containerd
// v2.4.2, exactly as a stock containerd would run containerd-shim-runc-v2,
// and by hand over its own start/delete/ttrpc protocol.
//
// Run it as root from this directory:
//
//	go test ./...                      # skips clearly when not root or tools are missing
//	REQUIRE_INTEGRATION=1 go test ./... # missing prerequisites fail instead
//
// Environment:
//
//	SHIM_BINARY     shim under test (default <repo>/bin/containerd-shim-runc-v2)
//	TOOLS_BIN       dir with containerd, ctr, runc (default <repo>/.tools/bin)
//	TEST_IMAGE_TAR  OCI image-layout tarball (default <repo>/.tools/images/busybox.tar)
//	CYCLES          ctr run --rm cycles of the stress test (default 500)
//	OOM_STRESS_CONTAINERS  OOM-killed containers per round, run at once (default 8)
//	OOM_STRESS_ROUNDS      rounds of the OOM stress test (default 10)
//	REQUIRE_INTEGRATION=1  turn skips for missing prerequisites into failures
//	TEST_CGROUP_DRIVER     cgroupfs (default) or systemd: every container gets
//	                       the runc option SystemdCgroup and a slice:prefix:id
//	                       cgroup, CRI runs with SystemdCgroup = true and pods
//	                       get a *.slice parent (cgroupdriver_test.go); needs
//	                       systemd as PID 1
//	TESTKIT_BASE_DIR       where the daemons' directories go (default /run)
//
// TestMain starts one containerd for the whole package under /run/oomshim-test-*,
// with the CRI plugin disabled and containerd-shim-runc-v2 on its PATH pointing
// at SHIM_BINARY. Every test uses its own containerd namespace. After the
// tests, TestMain stops containerd and fails the run if a shim process, mount,
// fifo, bundle, runc container or cgroup made by the tests is left behind
// (under systemd also any scope or slice of the run).
//
// The OOM tests (TestOOM, TestOOMStress) run containers with a 20 MiB memory
// limit and an equal memory+swap limit (where swap can be limited) that
// really get OOM-killed, on cgroup v1 (legacy or hybrid) and v2 alike; they
// skip clearly where no OOM can be forced (no memory controller, or swap that
// cannot be limited).
package integration
