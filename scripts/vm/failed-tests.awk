# failed-tests.awk: print the output of every failed top-level test from
# `go test -v` output (the integration suite's test.log).
#
# Lines are attributed to the test named by the last "=== RUN/CONT/NAME"
# header, so interleaved output lands with its test. A multi-line message
# (lines after a "file.go:NN:" line that start no message of their own; the
# containerd log tail a failed test logs is one) is cut to its first `keep`
# lines, so the assertions stay visible; containerd's log is printed elsewhere.
# Tests that a -test.timeout panic lists as running count as failed.
#
#   awk -v keep=15 -f failed-tests.awk test.log   the failed tests' output
#   awk -v list=1 -f failed-tests.awk test.log    the names of the innermost
#                                                 failed (sub)tests, one a line

function top(name) { sub(/\/.*/, "", name); return name }

function add(t, s) { n[t]++; line[t, n[t]] = s }

function fail(t) {
	if (!(t in leaf)) { leaf[t] = 1; lorder[++nl] = t }
	t = top(t)
	if (!(t in failed)) { failed[t] = 1; order[++nf] = t }
}

function flush(t) {
	if (dropped[t] > 0) add(t, "        [... " dropped[t] " more lines of this message]")
	cont[t] = 0
	dropped[t] = 0
}

BEGIN { if (keep == "") keep = 15 }

# The timeout panic ends all test output; it names the running tests.
/^panic: / { cur = ""; inpanic = 1; next }
inpanic && /^$/ { inpanic = 0 }
inpanic && /^\t\tTest/ { fail($1); next }
inpanic { next }

/^=== (RUN|CONT|NAME) / { cur = top($3) }

# Subtest results, printed after their parent's.
cur == "" && last != "" && /^ +--- (PASS|FAIL|SKIP): / {
	add(last, $0)
	if ($2 == "FAIL:") fail($3)
	next
}

cur == "" { next }

$0 !~ /^ *[A-Za-z0-9_.-]+\.go:[0-9]+: / && $0 !~ /^ *(---|===) / {
	cont[cur]++
	if (cont[cur] <= keep) add(cur, $0)
	else dropped[cur]++
	next
}

{ flush(cur); add(cur, $0) }

/^--- FAIL: / { fail($3) }

# A top-level result ends its test's output; what follows is TestMain's.
/^--- (PASS|FAIL|SKIP): / { last = cur; cur = "" }

END {
	if (list) {
		# Innermost only: a parent fails when a subtest does.
		for (i = 1; i <= nl; i++) {
			inner = 1
			for (j = 1; j <= nl; j++)
				if (index(lorder[j], lorder[i] "/") == 1) inner = 0
			if (inner) print lorder[i]
		}
		exit
	}
	for (i = 1; i <= nf; i++) {
		t = order[i]
		flush(t)
		printf "----- output of %s -----\n", t
		for (j = 1; j <= n[t]; j++) print line[t, j]
	}
}
