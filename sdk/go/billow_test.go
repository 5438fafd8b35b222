package billow_test

// These tests run against a live `billow serve` (BILLOW_URL, and BILLOW_API_KEY with `auth: keys`) that has
// the tokens_total meter of tests/sdk/billow.yaml.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	billow "github.com/billow-dev/billow/sdk/go"
)

const meter, feature = "tokens_total", "sdk_tokens"

var ctx = context.Background()

func server(t *testing.T) (string, string) {
	u := os.Getenv("BILLOW_URL")
	if u == "" {
		t.Fatal("set BILLOW_URL to a running `billow serve` (see README.md)")
	}
	return u, os.Getenv("BILLOW_API_KEY")
}

func client(t *testing.T, opts ...billow.Option) *billow.Client {
	u, key := server(t)
	return billow.New(u, append([]billow.Option{billow.WithAPIKey(key), billow.WithRetries(4, 10*time.Millisecond, time.Second)}, opts...)...)
}

// admin is raw HTTP for set-up the SDK does not cover (subjects, features, entitlements).
func admin(t *testing.T, method, path string, body any) int {
	u, key := server(t)
	data, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, u+path, bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp.StatusCode
}

// subject is a fresh subject with a metered entitlement to the feature: 100 tokens a month.
func subject(t *testing.T) string {
	key := fmt.Sprintf("sdk-go-%d", time.Now().UnixNano())
	admin(t, "POST", "/api/v1/subjects", []map[string]string{{"key": key}})
	admin(t, "POST", "/api/v1/features", map[string]string{"key": feature, "name": "SDK tokens", "meterSlug": meter})
	if s := admin(t, "POST", "/api/v1/subjects/"+key+"/entitlements", map[string]any{"type": "metered",
		"featureKey": feature, "usagePeriod": map[string]string{"interval": "MONTH"}, "issueAfterReset": 100}); s != 201 {
		t.Fatalf("entitlement: %d", s)
	}
	return key
}

func total(t *testing.T, c *billow.Client, subj string) string {
	res, err := c.QueryMeter(ctx, meter, billow.MeterQuery{Subject: []string{subj}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Data) == 0 {
		return "0"
	}
	return res.Data[0].Value.String()
}

func tokens(v any) map[string]any { return map[string]any{"tokens": v, "model": "gpt"} }

// proxy forwards to Billow; the answers to the first `faults` requests are lost (a 503, or a dropped
// connection with drop). It records each body once Billow has answered it.
type proxy struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newProxy(t *testing.T, faults int, drop bool) *proxy {
	target, _ := server(t)
	p := &proxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequest(r.Method, target+r.URL.RequestURI(), bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		payload, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		p.mu.Lock()
		p.bodies = append(p.bodies, string(body))
		n := len(p.bodies)
		p.mu.Unlock()
		if n <= faults && drop {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		status := resp.StatusCode
		if n <= faults {
			status, payload = 503, []byte(`{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"fault"}`)
			w.Header().Set("Retry-After", "0")
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(status)
		w.Write(payload)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.bodies...)
}

func TestIngestAndQueryAreExactInWindowsOfATimeZone(t *testing.T) {
	c, subj := client(t), subject(t)
	at := time.Date(2026, 11, 28, 23, 30, 0, 0, time.UTC) // 00:30 on the 29th in Berlin
	one := c.NewEvent("prompt", subj, tokens(json.Number("0.1")))
	one.Time = at
	if err := c.Ingest(ctx, one); err != nil {
		t.Fatal(err)
	}
	batch := []billow.Event{{Type: "prompt", Subject: subj, Time: at, Data: tokens("0.2")},
		{Type: "prompt", Subject: subj, Time: at.Add(-time.Hour), Data: map[string]any{"tokens": 7, "model": "o3"}}}
	if err := c.IngestBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	res, err := c.QueryMeter(ctx, meter, billow.MeterQuery{From: at.Add(-48 * time.Hour), To: at.Add(24 * time.Hour),
		WindowSize: "DAY", WindowTimeZone: "Europe/Berlin", Subject: []string{subj}, GroupBy: []string{"model"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range res.Data {
		got = append(got, fmt.Sprintf("%s %s %s", r.WindowStart.Format(time.RFC3339), r.GroupBy["model"], r.Value))
	}
	if want := "2026-11-27T23:00:00Z o3 7,2026-11-28T23:00:00Z gpt 0.3"; strings.Join(got, ",") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	gpt, err := c.QueryMeter(ctx, meter, billow.MeterQuery{Subject: []string{subj}, FilterGroupBy: map[string]string{"model": "gpt"}})
	if err != nil || len(gpt.Data) != 1 || gpt.Data[0].Value != "0.3" { // 0.1 + 0.2, exactly
		t.Fatalf("filtered: %+v %v", gpt, err)
	}
}

func TestIngestionReceiptReportsAResentBatchAsDuplicates(t *testing.T) {
	c, subj := client(t), subject(t)
	batch := []billow.Event{c.NewEvent("prompt", subj, tokens("1")), c.NewEvent("prompt", subj, tokens("2"))}
	first, err := c.IngestBatchWithReceipt(ctx, batch)
	if err != nil || first.Events != 2 || first.Accepted != 2 || len(first.Duplicates) != 0 {
		t.Fatalf("first: %+v %v", first, err)
	}
	again, err := c.IngestBatchWithReceipt(ctx, batch)
	if err != nil || again.Accepted != 0 || len(again.Duplicates) != 2 || again.Duplicates[0].ID != batch[0].ID || again.Digest != first.Digest {
		t.Fatalf("again: %+v %v", again, err)
	}
	read, err := c.GetReceipt(ctx, first.ID)
	if err != nil || read.ID != first.ID || read.Accepted != 2 {
		t.Fatalf("read: %+v %v", read, err)
	}
	res, err := c.QueryMeter(ctx, meter, billow.MeterQuery{Subject: []string{subj}})
	if err != nil || len(res.Data) != 1 || res.Data[0].Value != "3" { // stored once
		t.Fatalf("total: %+v %v", res, err)
	}
}

func TestEntitlementValue(t *testing.T) {
	c, subj := client(t), subject(t)
	if err := c.IngestBatch(ctx, []billow.Event{c.NewEvent("prompt", subj, tokens("0.1")), c.NewEvent("prompt", subj, tokens("0.2"))}); err != nil {
		t.Fatal(err)
	}
	v, err := c.EntitlementValue(ctx, subj, feature, time.Time{})
	want := billow.EntitlementValue{HasAccess: true, Balance: "99.7", Usage: "0.3", Overage: "0", TotalAvailableGrantAmount: "100"}
	if err != nil || *v != want {
		t.Fatalf("got %+v %v", v, err)
	}
}

func TestErrorsCarryTheProblem(t *testing.T) {
	c, subj := client(t), subject(t)
	_, err := c.QueryMeter(ctx, "no_such_meter", billow.MeterQuery{})
	var e *billow.Error
	if !errors.As(err, &e) || e.Status != 404 || e.Title != "Not Found" || !strings.Contains(e.Detail, "no_such_meter") {
		t.Fatalf("got %#v", err)
	}
	err = c.IngestBatch(ctx, []billow.Event{c.NewEvent("prompt", subj, tokens("1")), c.NewEvent("prompt", subj, tokens("x"))})
	if !errors.As(err, &e) || e.Status != 400 || e.Problem["validationErrors"] == nil {
		t.Fatalf("got %#v", err)
	}
	if got := total(t, c, subj); got != "0" { // all or nothing
		t.Fatalf("stored %s", got)
	}
}

func TestBearerAPIKey(t *testing.T) {
	if _, key := server(t); key == "" {
		t.Skip("the server runs without auth: keys")
	}
	_, err := client(t, billow.WithAPIKey("bk_not_a_key")).QueryMeter(ctx, meter, billow.MeterQuery{})
	var e *billow.Error
	if !errors.As(err, &e) || e.Status != 401 || e.Title != "Unauthorized" {
		t.Fatalf("got %#v", err)
	}
}

func TestRetriesResendTheSameIDs(t *testing.T) {
	for _, drop := range []bool{false, true} {
		c, subj := client(t), subject(t)
		p := newProxy(t, 2, drop) // Billow stores the batch, but the client never hears so twice
		flaky := billow.New(p.URL, billow.WithAPIKey(os.Getenv("BILLOW_API_KEY")), billow.WithRetries(4, time.Millisecond, time.Second))
		if err := flaky.IngestBatch(ctx, []billow.Event{c.NewEvent("prompt", subj, tokens("1.5")), c.NewEvent("prompt", subj, tokens("1.5"))}); err != nil {
			t.Fatal(err)
		}
		if b := p.seen(); len(b) != 3 || b[0] != b[1] || b[1] != b[2] {
			t.Fatalf("drop=%v: bodies %v", drop, b)
		}
		if got := total(t, c, subj); got != "3" {
			t.Fatalf("drop=%v: counted %s", drop, got)
		}
	}
}

func TestRetriesGiveUpWithTheLastProblem(t *testing.T) {
	subj, p := subject(t), newProxy(t, 10, false)
	flaky := billow.New(p.URL, billow.WithAPIKey(os.Getenv("BILLOW_API_KEY")), billow.WithRetries(2, time.Millisecond, time.Second))
	err := flaky.Ingest(ctx, flaky.NewEvent("prompt", subj, tokens("1")))
	var e *billow.Error
	if !errors.As(err, &e) || e.Status != 503 || len(p.seen()) != 3 {
		t.Fatalf("got %v after %d requests", err, len(p.seen()))
	}
}

func TestBatcherFlushesOnSizeIntervalAndClose(t *testing.T) {
	c, subj, p := client(t), subject(t), newProxy(t, 0, false)
	via := billow.New(p.URL, billow.WithAPIKey(os.Getenv("BILLOW_API_KEY")))
	b := via.NewBatcher(billow.BatcherOptions{MaxEvents: 3, Interval: time.Minute})
	for i := 0; i < 7; i++ {
		if _, err := b.Add(billow.Event{Type: "prompt", Subject: subj, Data: tokens("0.5")}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(p.seen()); n != 2 { // two full batches; one event waits
		t.Fatalf("%d batches before close", n)
	}
	if err := b.Close(ctx); err != nil || len(p.seen()) != 3 || total(t, c, subj) != "3.5" {
		t.Fatalf("close: %v, %d batches, total %s", err, len(p.seen()), total(t, c, subj))
	}
	timed := via.NewBatcher(billow.BatcherOptions{Interval: 100 * time.Millisecond})
	defer timed.Close(ctx)
	timed.Add(billow.Event{Type: "prompt", Subject: subj, Data: tokens("0.5")})
	for deadline := time.Now().Add(10 * time.Second); len(p.seen()) < 4 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if len(p.seen()) != 4 || total(t, c, subj) != "4" {
		t.Fatalf("interval: %d batches, total %s", len(p.seen()), total(t, c, subj))
	}
}

func TestBatcherReportsARefusedBatch(t *testing.T) {
	c, subj := client(t), subject(t)
	var failed []string
	b := c.NewBatcher(billow.BatcherOptions{OnError: func(err error, events []billow.Event) {
		failed = append(failed, fmt.Sprintf("%d %s", err.(*billow.Error).Status, events[0].ID))
	}})
	bad, _ := b.Add(billow.Event{Type: "prompt", Subject: subj, Data: map[string]any{"tokens": "x"}})
	if err := b.Close(ctx); err != nil || strings.Join(failed, ",") != "400 "+bad.ID {
		t.Fatalf("close: %v, failed %v", err, failed)
	}
	plain := c.NewBatcher(billow.BatcherOptions{})
	plain.Add(billow.Event{Type: "prompt", Subject: subj, Data: map[string]any{"tokens": "x"}})
	var e *billow.Error
	if err := plain.Close(ctx); !errors.As(err, &e) || e.Status != 400 || len(e.Events) != 1 {
		t.Fatalf("close: %#v", err)
	}
}

func TestPortalToken(t *testing.T) {
	c, subj := client(t), subject(t)
	expires := time.Now().UTC().Truncate(time.Second).Add(2 * time.Hour)
	tok, err := c.CreatePortalToken(ctx, billow.PortalTokenRequest{Subject: subj, AllowedMeterSlugs: []string{meter}, ExpiresAt: &expires})
	var e *billow.Error
	if errors.As(err, &e) && e.Status == 404 {
		t.Skip("the server has no POST /api/v1/portal/tokens yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	if tok.ID == "" || tok.Token == "" || tok.Subject != subj || tok.Expired || !tok.ExpiresAt.Equal(expires) ||
		tok.CreatedAt.IsZero() || strings.Join(tok.AllowedMeterSlugs, ",") != meter {
		t.Fatalf("got %+v", tok)
	}
}
