package oom

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("oom: watcher closed")
	// ErrExists is returned when a container is already watched.
	ErrExists = errors.New("oom: container already watched")
	// ErrNotWatched is returned for a container that is not watched.
	ErrNotWatched = errors.New("oom: container not watched")
)

const (
	// After a cgroup v1 OOM notification whose kill oom_kill has not
	// counted yet, the counters are re-read every recheckFast for
	// recheckFastFor (the kernel signals 0.2-2.5 ms before it counts the
	// kill, measured on 6.18), then at intervals doubling up to recheckMax,
	// for at most recheckFor. A timerfd drives this: the runtime's own
	// timers wake an idle poller at millisecond granularity only.
	recheckFast    = 100 * time.Microsecond
	recheckFastFor = 5 * time.Millisecond
	recheckMax     = 4 * time.Millisecond
	recheckFor     = time.Second
)

// Level says whose memory limit made the OOM killer act.
type Level int

const (
	// LevelContainer: the container's own limit (its max counter rose).
	LevelContainer Level = iota + 1
	// LevelAncestor: a parent's limit, such as a pod's.
	LevelAncestor
	// LevelUnknown: the container's cgroup was gone before it could be
	// read (the systemd driver); the kill was seen on its parent, whose
	// own limit did not fire (else it is LevelAncestor).
	LevelUnknown
)

func (l Level) String() string {
	switch l {
	case LevelContainer:
		return "container"
	case LevelAncestor:
		return "ancestor"
	case LevelUnknown:
		return "unknown (cgroup removed before it was read)"
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// Event is one observed rise of a container's oom_kill counter.
type Event struct {
	ID      string // container ID, never empty
	Cgroup  string // memory cgroup directory
	OOMKill uint64 // the new oom_kill count
	Kills   uint64 // how much it rose since the last report
	Level   Level
}

// Reporter receives OOM events. It runs with the container's watch locked,
// so everything it queues is queued before Stop or Check returns: it must
// not block (queueing on the event sequencer is what it is for).
type Reporter func(Event)

// Watcher follows the memory cgroups of a shim's containers: one epoll
// instance and one goroutine for all of them. On cgroup v2 it watches
// memory.events and cgroup.events with inotify; on cgroup v1 it registers
// an eventfd on memory.oom_control. Either way a wakeup re-reads the
// counters and reports only rises over the baseline read at Add.
type Watcher struct {
	ctx    context.Context
	report Reporter
	// ep is the epoll instance, waited on through the Go runtime's poller
	// so that no OS thread sits blocked in epoll_wait; closing it stops
	// the goroutine.
	ep    *os.File
	epc   syscall.RawConn
	ino   atomic.Int32 // inotify, created by the first v2 Add; -1 before
	timer atomic.Int32 // timerfd for v1 re-reads, created by the first v1 Add; -1 before
	// drainMu is held from reading inotify events to having followed
	// each with a read, so that Stop can wait for notifications already
	// taken off the queue (followNotifications).
	drainMu sync.Mutex

	mu      sync.Mutex
	closed  bool
	byID    map[string]*watch
	byFd    map[int32]*watch // v1 eventfd -> watch
	byWd    map[int32]*watch // v2 inotify watch descriptor -> watch
	parents map[string]*parent
	stopped chan struct{}
}

// watch is one container's cgroup.
type watch struct {
	mu      sync.Mutex
	id      string
	dir     string
	v2      bool
	counter int // fd: v2 memory.events, v1 memory.oom_control
	efd     int // v1 eventfd, -1 on v2
	wds     []int32
	last    Counts
	buf     []byte
	done    bool // stopped, or its cgroup is gone
	gone    bool // its cgroup was gone at a read
	oomed   bool // an OOM kill of it was reported
	// missed: memory.events notified a change that no read could follow,
	// the cgroup being gone by then (the systemd driver removes an
	// emptied scope at once)
	missed bool
	parent *parent // v2: its parent cgroup, nil if none is readable
}

// NewWatcher starts a watcher whose OOMs go to report. ctx carries the
// logger. Stop it with Close.
func NewWatcher(ctx context.Context, report Reporter) (*Watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("oom: epoll: %w", err)
	}
	// A non-blocking descriptor is one os.NewFile hands to the runtime's
	// poller; an epoll instance is readable while it has events ready.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("oom: epoll: %w", err)
	}
	ep := os.NewFile(uintptr(epfd), "oom-epoll")
	epc, err := ep.SyscallConn()
	if err == nil {
		// Fails unless the runtime's poller took the descriptor.
		err = ep.SetReadDeadline(time.Time{})
	}
	if err != nil {
		ep.Close()
		return nil, fmt.Errorf("oom: epoll: %w", err)
	}
	w := &Watcher{
		ctx: ctx, report: report, ep: ep, epc: epc,
		byID: map[string]*watch{}, byFd: map[int32]*watch{}, byWd: map[int32]*watch{}, parents: map[string]*parent{},
		stopped: make(chan struct{}),
	}
	w.ino.Store(-1)
	w.timer.Store(-1)
	go w.loop()
	return w, nil
}

// epollCtl changes the epoll set. It holds a reference on the epoll
// descriptor, so it fails cleanly once Close has released it.
func (w *Watcher) epollCtl(op, fd int, events uint32) error {
	var err error
	cerr := w.epc.Control(func(epfd uintptr) {
		var ev *unix.EpollEvent
		if op != unix.EPOLL_CTL_DEL {
			ev = &unix.EpollEvent{Events: events, Fd: int32(fd)}
		}
		err = unix.EpollCtl(int(epfd), op, fd, ev)
	})
	if cerr != nil {
		return ErrClosed
	}
	return err
}

// Add starts watching container id's memory cgroup. v2 says whether dir
// (the cgroup's directory) is on the unified hierarchy. The current
// counters become the baseline: only later OOMs are reported.
func (w *Watcher) Add(id, dir string, v2 bool) (err error) {
	if id == "" {
		return errors.New("oom: empty container id")
	}
	wt := &watch{id: id, dir: dir, v2: v2, counter: -1, efd: -1, buf: make([]byte, 256)}
	defer func() {
		if err != nil {
			wt.close()
		}
	}()
	name := "memory.oom_control"
	if v2 {
		name = "memory.events"
	}
	if wt.counter, err = unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("oom: open %s: %w", filepath.Join(dir, name), err)
	}
	if wt.last, err = wt.read(); err != nil {
		return fmt.Errorf("oom: baseline of %s: %w", dir, err)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if _, ok := w.byID[id]; ok {
		return fmt.Errorf("%w: %s", ErrExists, id)
	}
	if v2 {
		err = w.addInotify(wt)
	} else {
		err = w.addEventfd(wt)
	}
	if err != nil {
		return err
	}
	if v2 {
		wt.parent = w.parentOf(wt)
	}
	w.byID[id] = wt
	return nil
}

// lazyFd returns the descriptor in slot, first making it with open and
// adding it to the epoll set. w.mu is held.
func (w *Watcher) lazyFd(slot *atomic.Int32, what string, open func() (int, error)) (int, error) {
	if fd := int(slot.Load()); fd >= 0 {
		return fd, nil
	}
	fd, err := open()
	if err != nil {
		return -1, fmt.Errorf("oom: %s: %w", what, err)
	}
	if err := w.epollCtl(unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("oom: epoll add %s: %w", what, err)
	}
	slot.Store(int32(fd))
	return fd, nil
}

// addInotify watches wt's files. The inotify instance is made on the first
// v2 watch only: a cgroup v1 host needs none, and instances are limited per
// user (fs.inotify.max_user_instances, often 128).
func (w *Watcher) addInotify(wt *watch) error {
	ino, err := w.lazyFd(&w.ino, "inotify", func() (int, error) {
		return unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	})
	if err != nil {
		return err
	}
	// cgroup.events changes when the last process leaves: the moment to
	// look again even if memory.events' own notification lags.
	for _, name := range []string{"memory.events", "cgroup.events"} { // memory.events first: wds[0]
		wd, err := unix.InotifyAddWatch(ino, filepath.Join(wt.dir, name), unix.IN_MODIFY)
		if err != nil {
			for _, wd := range wt.wds {
				unix.InotifyRmWatch(ino, uint32(wd))
				delete(w.byWd, wd)
			}
			return fmt.Errorf("oom: inotify %s: %w", filepath.Join(wt.dir, name), err)
		}
		wt.wds = append(wt.wds, int32(wd))
		w.byWd[int32(wd)] = wt
	}
	return nil
}

// addEventfd registers an eventfd on wt's memory.oom_control. The re-read
// timer is made with the first v1 watch.
func (w *Watcher) addEventfd(wt *watch) error {
	if _, err := w.lazyFd(&w.timer, "timerfd", func() (int, error) {
		return unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	}); err != nil {
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("oom: eventfd: %w", err)
	}
	wt.efd = efd
	ctl := filepath.Join(wt.dir, "cgroup.event_control")
	if err := writeFile(ctl, fmt.Sprintf("%d %d", efd, wt.counter)); err != nil {
		return fmt.Errorf("oom: register with %s: %w", ctl, err)
	}
	if err := w.epollCtl(unix.EPOLL_CTL_ADD, efd, unix.EPOLLIN); err != nil {
		return fmt.Errorf("oom: epoll add eventfd: %w", err)
	}
	w.byFd[int32(efd)] = wt
	return nil
}

func writeFile(path, s string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(s))
	return err
}

// Check re-reads container id's counters now and reports a rise. The shim
// calls it before publishing an exec process's exit.
func (w *Watcher) Check(id string) error {
	w.mu.Lock()
	wt, ok := w.byID[id]
	w.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotWatched, id)
	}
	wt.mu.Lock()
	defer wt.mu.Unlock()
	w.update(wt, nil)
	return nil
}

// Stop gives container id's watch its final word and forgets it: one last
// read (kernfs notification is asynchronous, so this read is what turns an
// OOM racing with the exit into one reported before it), then removal, so a
// re-used ID is watched afresh. It returns the last counters seen. It never
// waits on the watcher's goroutine beyond one read of a counter file, or,
// when the init exited by itself and its cgroup is gone, the following of
// the notifications already queued (followNotifications).
//
// sigkilled says the container's init died of SIGKILL, as an OOM kill
// does: if its cgroup was gone before the final read (the systemd driver
// removes an emptied scope at once) and no OOM kill of it was reported, a
// rise of its parent's counter that no other child accounts for is
// reported as this container's (parent.go). So it is when the init lived
// but the cgroup's memory.events told of a change that could no longer be
// read: a child process OOM-killed just before the init exited.
func (w *Watcher) Stop(id string, sigkilled bool) (Counts, error) {
	read := false // the final read is done
	if !sigkilled {
		read = w.followNotifications(id)
	}
	w.mu.Lock()
	wt, ok := w.byID[id]
	if ok {
		delete(w.byID, id)
		for _, wd := range wt.wds {
			delete(w.byWd, wd)
		}
		if wt.efd >= 0 {
			delete(w.byFd, int32(wt.efd))
		}
		if wt.parent != nil {
			w.leave(wt.parent, wt)
		}
	}
	w.mu.Unlock()
	if !ok {
		return Counts{}, fmt.Errorf("%w: %s", ErrNotWatched, id)
	}
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if !read {
		w.update(wt, nil)
	}
	if wt.gone && (sigkilled || wt.missed) && wt.parent != nil && !wt.oomed {
		w.fromParent(wt)
	}
	wt.done = true
	for _, wd := range wt.wds {
		unix.InotifyRmWatch(int(w.ino.Load()), uint32(wd)) // fails harmlessly if the cgroup is gone
	}
	if wt.efd >= 0 {
		w.epollCtl(unix.EPOLL_CTL_DEL, wt.efd, 0)
	}
	wt.close()
	return wt.last, nil
}

// followNotifications makes sure that a notification of id's memory.events
// queued before its init exited has been followed before Stop decides:
// when the cgroup is gone already and no kill of it was reported, the
// inotify queue is drained here (the watcher's goroutine may not have
// woken yet), after any drain in progress, so that such a notification
// marks the watch missed. Its read of a v2 watch is Stop's final read: it
// reports whether it made one.
func (w *Watcher) followNotifications(id string) bool {
	w.mu.Lock()
	wt, ok := w.byID[id]
	w.mu.Unlock()
	if !ok || !wt.v2 {
		return false
	}
	wt.mu.Lock()
	w.update(wt, nil)
	drain := wt.gone && !wt.oomed && !wt.missed && wt.parent != nil
	wt.mu.Unlock()
	if drain {
		w.drainInotify(make([]byte, 4096), nil)
	}
	return true
}

// fromParent reports one kill of wt's parent that no report explains as
// wt's, whose own counters could no longer be read. wt.mu is held.
func (w *Watcher) fromParent(wt *watch) {
	ok, level := wt.parent.claim()
	if !ok {
		return
	}
	ev := Event{ID: wt.id, Cgroup: wt.dir, OOMKill: wt.last.OOMKill + 1, Kills: 1, Level: level}
	wt.last.OOMKill = ev.OOMKill
	w.report(ev)
	log.G(w.ctx).WithFields(log.Fields{
		"container_id": ev.ID, "cgroup": ev.Cgroup, "parent": wt.parent.dir, "kills": ev.Kills, "limit": ev.Level.String(),
	}).Warn("container OOM-killed (seen on its parent: its cgroup was removed first)")
}

func (wt *watch) close() {
	for _, fd := range []*int{&wt.counter, &wt.efd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// read returns the cgroup's current counters.
func (wt *watch) read() (Counts, error) {
	data, err := preadAll(wt.counter, &wt.buf)
	if err != nil {
		return Counts{}, err
	}
	var c Counts
	if c.OOMKill, err = parseKeyed(data, "oom_kill"); err != nil {
		return Counts{}, err
	}
	if wt.v2 {
		c.Max, err = parseKeyed(data, "max")
	}
	return c, err
}

// v1OwnLimit tells, on cgroup v1, whether the container's own limit fired:
// its peak usage reached its limit. (memory.failcnt cannot tell: kernels
// such as 6.18 leave it at 0 across an OOM kill at the cgroup's own limit.)
// Read only when an OOM is reported.
func (wt *watch) v1OwnLimit() bool {
	limit, err1 := readUint(filepath.Join(wt.dir, "memory.limit_in_bytes"))
	peak, err2 := readUint(filepath.Join(wt.dir, "memory.max_usage_in_bytes"))
	if err1 != nil || err2 != nil {
		return false
	}
	const slack = 1 << 20 // charges come in batches; the peak may stop short of the limit
	return peak+slack >= limit
}

func readUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseUint(trimNL(data))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// update reads wt and reports a rise of oom_kill; it returns whether it
// found one. wt.mu is held. The kill's log line is written at once, or,
// with logLater (the watcher's goroutine, which may have many cgroups to
// read in one wakeup), appended there for after the wakeup's reports: in a
// storm a log line per kill would hold back the reports of the others.
func (w *Watcher) update(wt *watch, logLater *[]Event) bool {
	if wt.done {
		return false
	}
	c, err := wt.read()
	if err != nil {
		if isGone(err) {
			wt.done = true // the last known count stands
			wt.gone = true
			// With the systemd driver the scope's cgroup can go before
			// an OOM kill was read: say so, to tell it from no OOM.
			log.G(w.ctx).WithFields(log.Fields{"container_id": wt.id, "cgroup": wt.dir, "oom_kill": wt.last.OOMKill}).
				Debug("cgroup removed; OOM counters no longer readable")
			return false
		}
		log.G(w.ctx).WithError(err).WithField("container_id", wt.id).Warn("read OOM counters")
		return false
	}
	if c.OOMKill <= wt.last.OOMKill {
		// Counters only grow; never let a read lower the baseline.
		wt.last.Max = max(wt.last.Max, c.Max)
		return false
	}
	ev := Event{ID: wt.id, Cgroup: wt.dir, OOMKill: c.OOMKill, Kills: c.OOMKill - wt.last.OOMKill, Level: LevelAncestor}
	if (wt.v2 && c.Max > wt.last.Max) || (!wt.v2 && wt.v1OwnLimit()) {
		ev.Level = LevelContainer
	}
	wt.last = c
	wt.oomed = true
	if wt.parent != nil {
		wt.parent.counted(ev.Kills)
	}
	w.report(ev)
	if logLater != nil {
		*logLater = append(*logLater, ev)
	} else {
		w.logKill(ev)
	}
	return true
}

func (w *Watcher) logKill(ev Event) {
	log.G(w.ctx).WithFields(log.Fields{
		"container_id": ev.ID, "cgroup": ev.Cgroup, "oom_kill": ev.OOMKill, "kills": ev.Kills, "limit": ev.Level.String(),
	}).Warn("container OOM-killed")
}

// loop is the watcher's goroutine: it waits for the epoll instance to be
// readable and re-reads the cgroups a wakeup names. It wakes on a timer
// only while a cgroup v1 notification awaits its counted kill.
func (w *Watcher) loop() {
	defer close(w.stopped)
	events := make([]unix.EpollEvent, 16)
	inobuf := make([]byte, 4096)
	var eb [8]byte
	var killed []Event // logged after each wakeup's reports
	// recheck holds the v1 watches notified of an OOM whose kill was not
	// yet counted, each with the time it gives up; they are re-read every
	// recheckFast until fastUntil, then after delay, which doubles.
	recheck := map[*watch]time.Time{}
	var fastUntil time.Time
	delay := recheckFast
	armed := false
	for {
		var n int
		var werr error
		err := w.epc.Read(func(epfd uintptr) bool {
			n, werr = unix.EpollWait(int(epfd), events, 0)
			if werr == unix.EINTR {
				n, werr = 0, nil
			}
			return n > 0 || werr != nil // false: wait until readable
		})
		switch {
		case err != nil: // closed
			return
		case werr != nil:
			log.G(w.ctx).WithError(werr).Error("oom watcher: epoll_wait")
			return
		}
		if len(recheck) > 0 {
			w.recheckAll(recheck, &killed)
		}
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case int(w.ino.Load()):
				w.drainInotify(inobuf, &killed)
				continue
			case int(w.timer.Load()):
				unix.Read(int(ev.Fd), eb[:]) // expired: the re-reads above were due
				continue
			}
			w.mu.Lock()
			wt := w.byFd[ev.Fd]
			w.mu.Unlock()
			if wt == nil {
				continue // stopped; Stop closes the eventfd
			}
			wt.mu.Lock()
			// Read only a live watch's eventfd: a stopped one's number
			// may already belong to another file.
			if !wt.done {
				unix.Read(wt.efd, eb[:])
				if !w.update(wt, &killed) && !wt.done {
					// v1 signals when the memcg enters OOM, before the
					// kill is counted: look again shortly.
					now := time.Now()
					recheck[wt] = now.Add(recheckFor)
					fastUntil, delay = now.Add(recheckFastFor), recheckFast
				}
				if wt.done { // the cgroup went away: nothing more to hear
					w.epollCtl(unix.EPOLL_CTL_DEL, wt.efd, 0)
				}
			}
			wt.mu.Unlock()
		}
		for i, ev := range killed {
			w.logKill(ev)
			killed[i] = Event{}
		}
		killed = killed[:0]
		var next time.Duration // 0: nothing to re-read
		if len(recheck) > 0 {
			if time.Now().Before(fastUntil) {
				next = recheckFast
			} else {
				delay = min(2*delay, recheckMax)
				next = delay
			}
		}
		if next != 0 || armed {
			w.arm(next)
			armed = next != 0
		}
	}
}

// arm sets the re-read timer to fire once after d; 0 disarms it.
func (w *Watcher) arm(d time.Duration) {
	tfd := int(w.timer.Load())
	if tfd < 0 {
		return
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(tfd, 0, &spec, nil); err != nil {
		log.G(w.ctx).WithError(err).Warn("oom watcher: arm re-read timer")
	}
}

// recheckAll re-reads the watches in recheck and drops those that found
// their kill, are gone, or ran out of time.
func (w *Watcher) recheckAll(recheck map[*watch]time.Time, logLater *[]Event) {
	now := time.Now()
	for wt, until := range recheck {
		wt.mu.Lock()
		if w.update(wt, logLater) || wt.done || now.After(until) {
			delete(recheck, wt)
		}
		wt.mu.Unlock()
	}
}

// drainInotify reads all pending inotify events and updates each watch
// they name once.
func (w *Watcher) drainInotify(buf []byte, logLater *[]Event) {
	w.drainMu.Lock()
	defer w.drainMu.Unlock()
	for {
		n, err := unix.Read(int(w.ino.Load()), buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n < unix.SizeofInotifyEvent {
			return // EAGAIN: drained
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafePointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(raw.Len)
			w.mu.Lock()
			wt := w.byWd[raw.Wd]
			w.mu.Unlock()
			if wt == nil {
				continue
			}
			wt.mu.Lock()
			w.update(wt, logLater)
			if wt.gone && len(wt.wds) > 0 && raw.Wd == wt.wds[0] { // memory.events
				wt.missed = true
			}
			wt.mu.Unlock()
		}
	}
}

// Close stops the goroutine and releases every watch without a final read.
// Closing the epoll instance ends the goroutine's wait at once.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	rest := w.byID
	w.byID, w.byFd, w.byWd = map[string]*watch{}, map[int32]*watch{}, map[int32]*watch{}
	w.mu.Unlock()
	w.ep.Close()
	select {
	case <-w.stopped:
	case <-time.After(5 * time.Second):
		log.G(w.ctx).Error("oom watcher goroutine did not stop")
	}
	for _, wt := range rest {
		wt.mu.Lock()
		wt.done = true
		wt.close()
		wt.mu.Unlock()
	}
	for _, fd := range []int{int(w.ino.Load()), int(w.timer.Load())} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	return nil
}
