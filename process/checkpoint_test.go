package process

import "testing"

func TestFirstCriuError(t *testing.T) {
	log := []byte("(00.001) Version: 3.17.1\n(00.120) Error (criu/tty.c:1014): tty: Unable to find a master for /dev/pts/0\n(00.121) Unlock network\n(00.200) Error (criu/cr-dump.c:2093): Dumping FAILED.\n")
	if got, want := firstCriuError(log), "Error (criu/tty.c:1014): tty: Unable to find a master for /dev/pts/0"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := firstCriuError([]byte("(00.001) all fine\n")); got != "" {
		t.Fatalf("got %q from a log without errors", got)
	}
}
