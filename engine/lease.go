package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dimagi/ptop/component"
)

// A lease makes one process at a time run a pillow (or its reindex): the
// process that holds it in the pillow's checkpoint store writes; any other
// waits as a hot standby and takes over once the lease is released or
// expires. Stores only read and compare-and-swap the lease (LeaseStore);
// the policy is here, the same for every store:
//
//   - The holder renews every ttl/3. It stops writing (its writes and
//     checkpoints fail at once, without a drain) when a renewal finds the
//     lease taken, or when it has not renewed for 3/4 of the ttl.
//   - A standby reads the lease about twice a second. It takes the lease
//     when it is free (released on a clean stop), or when its version has
//     not changed for a whole ttl by the standby's own clock (no clock is
//     compared across machines), or at once when the holder is a process of
//     the same host and PID namespace that no longer exists (kill -9).
//   - The holder releases the lease when the pillow stops.

// LeaseStore, Lease and ErrLeaseConflict are component's: a checkpoint
// store implements the lease's storage, the engine decides.
type (
	// LeaseStore is component.LeaseStore.
	LeaseStore = component.LeaseStore
	// Lease is component.Lease.
	Lease = component.Lease
)

// ErrLeaseConflict is component.ErrLeaseConflict.
var ErrLeaseConflict = component.ErrLeaseConflict

// ErrLeaseLost says a pillow stopped writing because its process no
// longer holds the pillow's lease.
var ErrLeaseLost = errors.New("lease lost")

// ErrLeaseHeld says another live process holds a lease that is not waited
// for (a reindex's).
var ErrLeaseHeld = errors.New("held by another process")

// NewHolder returns an identity for this process as a lease holder:
// host:pid:random.
func NewHolder() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown"
	}
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// leaseSpace is this process's host and PID namespace.
var leaseSpace = sync.OnceValue(func() string {
	host, _ := os.Hostname()
	return host + "/" + pidNamespace()
})

// holderGone reports whether the holder of l is a process of this host and
// PID namespace that has exited.
func holderGone(l Lease) bool {
	if l.Space == "" || l.Space != leaseSpace() || strings.HasSuffix(l.Space, "/") {
		return false
	}
	parts := strings.Split(l.Holder, ":")
	if len(parts) < 3 {
		return false
	}
	pid, err := strconv.Atoi(parts[len(parts)-2])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return processGone(pid)
}

// leaseKeeper takes, renews and releases one lease for one process.
type leaseKeeper struct {
	store  LeaseStore
	name   string
	holder string
	ttl    time.Duration
	log    *slog.Logger

	version    string       // of the lease as this process last wrote it
	validUntil atomic.Int64 // unix nanoseconds: writes stop then unless renewed
	lost       context.Context
	loseLease  context.CancelCauseFunc

	mu       sync.Mutex
	active   bool
	other    string // the holder a standby waits for
	storeErr error  // why a standby cannot read the lease
}

func newLeaseKeeper(store LeaseStore, name, holder string, ttl time.Duration, log *slog.Logger) *leaseKeeper {
	return &leaseKeeper{store: store, name: name, holder: holder, ttl: ttl, log: log.With("lease", name)}
}

// state returns whether the keeper holds the lease, and if not, who does
// and why the lease cannot be read, if it cannot.
func (k *leaseKeeper) state() (active bool, holder string, storeErr error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.active {
		return true, k.holder, nil
	}
	return false, k.other, k.storeErr
}

func (k *leaseKeeper) setState(active bool, other string) {
	k.mu.Lock()
	k.active, k.other, k.storeErr = active, other, nil
	k.mu.Unlock()
}

func (k *leaseKeeper) setStoreErr(err error) {
	k.mu.Lock()
	k.storeErr = err
	k.mu.Unlock()
}

// check returns an error once writes must stop. A nil keeper allows all.
func (k *leaseKeeper) check() error {
	if k == nil {
		return nil
	}
	if err := context.Cause(k.lost); err != nil {
		return err
	}
	if time.Now().UnixNano() >= k.validUntil.Load() {
		err := fmt.Errorf("%w: not renewed within %s", ErrLeaseLost, k.ttl*3/4)
		k.loseLease(err)
		return err
	}
	return nil
}

// pollEvery is how often a standby reads the lease.
func (k *leaseKeeper) pollEvery() time.Duration {
	return min(max(k.ttl/20, 20*time.Millisecond), 500*time.Millisecond)
}

// acquire waits until the keeper holds the lease, or ctx is done. With
// wait false it returns ErrLeaseHeld as soon as it sees another holder
// renew the lease.
func (k *leaseKeeper) acquire(ctx context.Context, wait bool) error {
	var seenVersion, logged string
	var seenAt time.Time
	storeDown := false
	k.mu.Lock()
	k.active = false // the holder waited for, if known, stays shown
	k.mu.Unlock()
	for {
		l, err := k.store.ReadLease(ctx, k.name)
		if err == nil {
			if storeDown {
				k.log.Info("lease store reachable again")
				storeDown = false
			}
			free, why := l.Holder == "" || l.Holder == k.holder, "free"
			if !free {
				now := time.Now()
				if l.Version != seenVersion {
					if seenVersion != "" && !wait {
						k.setState(false, l.Holder)
						return fmt.Errorf("lease %s: %w (%s)", k.name, ErrLeaseHeld, l.Holder)
					}
					seenVersion, seenAt = l.Version, now
				}
				ttl := l.TTL
				if ttl <= 0 {
					ttl = k.ttl
				}
				switch {
				case !wait && !holderGone(l) && now.Sub(l.Renewed) < ttl:
					// Renewed lately by its clock: alive, most likely
					// (else its next renewal, watched for below, says so).
					k.setState(false, l.Holder)
					return fmt.Errorf("lease %s: %w (%s)", k.name, ErrLeaseHeld, l.Holder)
				case holderGone(l):
					free, why = true, "its holder "+l.Holder+" has exited"
				case now.Sub(seenAt) > ttl:
					free, why = true, fmt.Sprintf("%s did not renew it for %s", l.Holder, ttl)
				}
			}
			if free {
				start := time.Now()
				v, err := k.store.WriteLease(ctx, k.name, l.Version, Lease{Holder: k.holder, TTL: k.ttl, Renewed: start.UTC(), Space: leaseSpace()})
				if err == nil {
					k.version = v
					k.validUntil.Store(start.Add(k.ttl * 3 / 4).UnixNano())
					k.lost, k.loseLease = context.WithCancelCause(context.Background())
					k.setState(true, "")
					if l.Holder != "" && l.Holder != k.holder {
						k.log.Warn("took over the lease", "from", l.Holder, "because", why)
					} else {
						k.log.Info("lease acquired", "holder", k.holder)
					}
					return nil
				}
				if errors.Is(err, ErrLeaseConflict) {
					continue // someone else was faster: read again
				}
				k.setStoreErr(err)
				k.log.Warn("taking the lease failed; retrying", "error", err)
			} else {
				k.setState(false, l.Holder)
				if logged != l.Holder {
					k.log.Info("standby: another process holds the lease; waiting for it to stop or expire", "holder", l.Holder)
					logged = l.Holder
				}
			}
		} else if ctx.Err() == nil {
			k.setStoreErr(err)
			if !storeDown {
				k.log.Warn("reading the lease failed; retrying", "error", err)
				storeDown = true
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(k.pollEvery()):
		}
	}
}

// renew keeps the lease until ctx is done or the lease is lost.
func (k *leaseKeeper) renew(ctx context.Context) {
	every := k.ttl / 3
	next := time.NewTimer(every)
	defer next.Stop()
	for {
		deadline := time.Until(time.Unix(0, k.validUntil.Load()))
		expire := time.NewTimer(max(deadline, 0))
		select {
		case <-ctx.Done():
			expire.Stop()
			return
		case <-k.lost.Done():
			expire.Stop()
			return
		case <-expire.C:
			err := fmt.Errorf("%w: not renewed within %s", ErrLeaseLost, k.ttl*3/4)
			k.log.Error("lease not renewed in time: writes stop", "error", err)
			k.loseLease(err)
			return
		case <-next.C:
		}
		expire.Stop()
		start := time.Now()
		v, err := k.store.WriteLease(ctx, k.name, k.version, Lease{Holder: k.holder, TTL: k.ttl, Renewed: start.UTC(), Space: leaseSpace()})
		switch {
		case err == nil:
			k.version = v
			k.validUntil.Store(start.Add(k.ttl * 3 / 4).UnixNano())
			next.Reset(every)
		case errors.Is(err, ErrLeaseConflict):
			l, _ := k.store.ReadLease(ctx, k.name)
			k.mu.Lock()
			k.other = l.Holder
			k.mu.Unlock()
			err := fmt.Errorf("%w: taken by %s", ErrLeaseLost, l.Holder)
			k.log.Error("lease taken by another process: writes stop", "holder", l.Holder)
			k.loseLease(err)
			return
		case ctx.Err() != nil:
			return
		default:
			k.log.Warn("renewing the lease failed; retrying", "error", err)
			next.Reset(min(every, max(k.ttl/20, 10*time.Millisecond)))
		}
	}
}

// release gives the lease up, unless it was lost, so that a standby takes
// over at once.
func (k *leaseKeeper) release() {
	k.setState(false, "")
	if k.lost == nil || k.lost.Err() != nil {
		return
	}
	k.loseLease(errors.New("released"))
	ctx, cancel := context.WithTimeout(context.Background(), k.ttl/2)
	defer cancel()
	if _, err := k.store.WriteLease(ctx, k.name, k.version, Lease{TTL: k.ttl, Renewed: time.Now().UTC()}); err != nil {
		k.log.Warn("releasing the lease failed; it expires by itself", "error", err)
		return
	}
	k.log.Info("lease released")
}

// hold takes the lease (waiting as a standby when wait is set), keeps it
// renewed, and returns a function that releases it.
func (k *leaseKeeper) hold(ctx context.Context, wait bool) (release func(), err error) {
	if err := k.acquire(ctx, wait); err != nil {
		return nil, err
	}
	// Renewals go on after ctx is done, while the pillow drains, until
	// release.
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		k.renew(rctx)
	}()
	return func() {
		stop()
		<-done
		k.release()
	}, nil
}
