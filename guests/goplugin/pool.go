package goplugin

import (
	"context"
	"time"

	"github.com/casparianflow/casparian/host/guest"
)

// acquire returns a warm process of the instance's artifact, most recently
// used first, or starts a new one. Whoever removes a process from the idle
// lists (under r.mu) owns it.
func (r *Runtime) acquire(ctx context.Context, inst *instance) (*proc, error) {
	key := inst.plugin.Hash
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, guest.Errorf(guest.ErrCancelled, "goplugin guest is closed")
	}
	for list := r.idle[key]; len(list) > 0; list = r.idle[key] {
		p := list[len(list)-1]
		r.removeIdleLocked(p)
		fired := !p.timer.Stop()
		if fired || p.run.hasExited() {
			// Its idle time ran out (the timer's expire will not find it
			// idle and leaves it to us), or it died while idle.
			r.retireLocked(p)
			continue
		}
		r.mu.Unlock()
		return p, nil
	}
	p := newProc(r, inst)
	r.live[p] = struct{}{}
	r.mu.Unlock()
	if err := p.start(ctx); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// release takes a process back after a job. A process that is not reusable
// is killed before release returns; one that served its last job is retired
// in the background; the others go idle, evicting the longest-idle ones
// beyond MaxIdlePerPlugin and MaxIdle.
func (r *Runtime) release(p *proc, reusable bool) {
	p.jobs++
	if !reusable || p.run.hasExited() {
		p.kill()
		return
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.kill()
		return
	}
	if r.cfg.MaxIdle < 0 || p.jobs >= r.cfg.MaxJobsPerProcess {
		r.retireLocked(p)
		r.mu.Unlock()
		return
	}
	p.idleSince = time.Now()
	p.timer = time.AfterFunc(r.cfg.MaxIdleTime, func() { r.expire(p) })
	r.idle[p.key] = append(r.idle[p.key], p)
	r.nIdle++
	if list := r.idle[p.key]; len(list) > r.cfg.MaxIdlePerPlugin {
		r.evictLocked(list[0])
	}
	for r.nIdle > r.cfg.MaxIdle {
		var oldest *proc
		for _, list := range r.idle {
			if len(list) > 0 && (oldest == nil || list[0].idleSince.Before(oldest.idleSince)) {
				oldest = list[0]
			}
		}
		r.evictLocked(oldest)
	}
	r.mu.Unlock()
}

// expire retires a process whose idle time ran out, unless it was taken
// meanwhile.
func (r *Runtime) expire(p *proc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || !r.removeIdleLocked(p) {
		return
	}
	r.log.Debug("go plugin process idle too long", "plugin", p.name, "pid", p.run.pidNow(), "idle", r.cfg.MaxIdleTime)
	r.retireLocked(p)
}

func (r *Runtime) evictLocked(p *proc) {
	r.removeIdleLocked(p)
	p.timer.Stop()
	r.log.Debug("go plugin process evicted from the warm pool", "plugin", p.name, "pid", p.run.pidNow())
	r.retireLocked(p)
}

// retireLocked stops p gracefully in the background (Close waits for it).
func (r *Runtime) retireLocked(p *proc) {
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		p.retire()
	}()
}

func (r *Runtime) removeIdleLocked(p *proc) bool {
	list := r.idle[p.key]
	for i, q := range list {
		if q == p {
			r.idle[p.key] = append(list[:i:i], list[i+1:]...)
			if len(r.idle[p.key]) == 0 {
				delete(r.idle, p.key)
			}
			r.nIdle--
			return true
		}
	}
	return false
}

func (r *Runtime) forget(p *proc) {
	r.mu.Lock()
	delete(r.live, p)
	r.mu.Unlock()
}
