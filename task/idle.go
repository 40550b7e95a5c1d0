package task

import (
	"context"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// A server that holds no container and has had no request for the idle
// time exits: containerd will never talk to it (it could not use the start
// action's reply, or died before its first request), and nothing else
// would ever stop it. A server that holds a container never exits this
// way: its containers are containerd's to delete.
//
// The timer runs only after requests: every request's end arms it anew,
// and when it fires it checks, under the service's lock, that no
// container is held and no request is in flight or came since.

// idleState is guarded by Service.idleMu.
type idleState struct {
	after    time.Duration // 0: never exit when idle
	timer    *time.Timer
	inflight int
	last     time.Time // when the last request ended
}

// StartIdleExit arms the idle exit; the server calls it once it serves.
func (s *Service) StartIdleExit() {
	if s.idle.after <= 0 {
		return
	}
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	s.idle.last = time.Now()
	s.idle.timer = time.AfterFunc(s.idle.after, s.idleCheck)
}

// Interceptor is the ttrpc server's unary interceptor: it tells the idle
// exit when requests begin and end.
func (s *Service) Interceptor(ctx context.Context, u ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, m ttrpc.Method) (interface{}, error) {
	s.idleMu.Lock()
	s.idle.inflight++
	s.idleMu.Unlock()
	defer func() {
		s.idleMu.Lock()
		s.idle.inflight--
		s.idle.last = time.Now()
		if s.idle.timer != nil && s.idle.inflight == 0 {
			s.idle.timer.Reset(s.idle.after)
		}
		s.idleMu.Unlock()
	}()
	return m(ctx, u)
}

// idleCheck runs when the idle timer fires.
func (s *Service) idleCheck() {
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	if s.idle.inflight > 0 {
		return // its end re-arms the timer
	}
	if wait := s.idle.after - time.Since(s.idle.last); wait > 0 {
		s.idle.timer.Reset(wait)
		return
	}
	s.mu.Lock()
	if s.closing || len(s.containers) > 0 {
		s.mu.Unlock()
		return
	}
	s.closing = true // a Create from now on is Unavailable
	s.mu.Unlock()
	log.G(s.ctx).WithField("idle", s.idle.after).Info("no container and no request for the idle time: shim exiting")
	go s.shutdown()
}
