package billow

import (
	"context"
	"errors"
	"sync"
	"time"
)

// BatcherOptions configure a Batcher; zero values take the defaults.
type BatcherOptions struct {
	MaxEvents int           // a batch goes out when this many events wait (default 500)
	Interval  time.Duration // and at least this often (default 1s)
	// OnError gets a batch that still failed after the client's retries. Without it, the error (an *Error
	// carrying the events) is returned by the next Flush or Close.
	OnError func(err error, events []Event)
}

// Batcher buffers events and sends them in batches: on size, on interval and on Close. Safe for concurrent use.
type Batcher struct {
	c      *Client
	opts   BatcherOptions
	mu     sync.Mutex // guards buf, failed, closed
	buf    []Event
	failed error
	closed bool
	sendMu sync.Mutex // one batch in flight at a time, in order
	stop   chan struct{}
	done   chan struct{}
}

// NewBatcher starts a batcher that sends through c.
func (c *Client) NewBatcher(opts BatcherOptions) *Batcher {
	if opts.MaxEvents <= 0 {
		opts.MaxEvents = 500
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	b := &Batcher{c: c, opts: opts, stop: make(chan struct{}), done: make(chan struct{})}
	go b.tick()
	return b
}

// Add buffers an event, filling in its id and time now, and returns it. A full batch is sent before Add returns.
func (b *Batcher) Add(e Event) (Event, error) {
	e = b.c.complete(e)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return e, errors.New("billow: the batcher is closed")
	}
	b.buf = append(b.buf, e)
	full := len(b.buf) >= b.opts.MaxEvents
	b.mu.Unlock()
	if full {
		b.send(context.Background())
	}
	return e, nil
}

// Flush sends every buffered event and returns the first error not handed to OnError since the last Flush.
func (b *Batcher) Flush(ctx context.Context) error {
	b.send(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.failed
	b.failed = nil
	return err
}

// Close stops the interval timer and flushes.
func (b *Batcher) Close(ctx context.Context) error {
	b.mu.Lock()
	wasClosed := b.closed
	b.closed = true
	b.mu.Unlock()
	if !wasClosed {
		close(b.stop)
		<-b.done
	}
	return b.Flush(ctx)
}

func (b *Batcher) tick() {
	defer close(b.done)
	t := time.NewTicker(b.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.send(context.Background())
		}
	}
}

func (b *Batcher) send(ctx context.Context) {
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	for {
		b.mu.Lock()
		n := len(b.buf)
		if n > b.opts.MaxEvents {
			n = b.opts.MaxEvents
		}
		batch := append([]Event(nil), b.buf[:n]...)
		b.buf = b.buf[n:]
		b.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		err := b.c.IngestBatch(ctx, batch)
		if err == nil {
			continue
		}
		var e *Error
		if errors.As(err, &e) {
			e.Events = batch
		}
		if b.opts.OnError != nil {
			b.opts.OnError(err, batch)
			continue
		}
		b.mu.Lock()
		if b.failed == nil {
			b.failed = err
		}
		b.mu.Unlock()
	}
}
