// Package billow is a client for Billow's OpenMeter-compatible v1 API: ingest CloudEvents (one, a batch, or
// through a Batcher), query meters, check entitlement values and create customer-portal tokens.
//
// Numbers: every numeric field of a response is a json.Number, the exact decimal text Billow sent (call
// .String(), or .Float64() if a float is good enough). Put json.Number("0.1") or the string "0.1" in event
// data to send an exact decimal.
package billow

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one Billow server. Make it with New; it is safe for concurrent use.
type Client struct {
	baseURL    string
	apiKey     string
	source     string
	http       *http.Client
	retries    int
	backoff    time.Duration
	maxBackoff time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithAPIKey sends `Authorization: Bearer <key>` (a bk_... key) with every request.
func WithAPIKey(key string) Option { return func(c *Client) { c.apiKey = key } }

// WithHTTPClient replaces http.DefaultClient.
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithSource sets the CloudEvents source of events made by NewEvent (default "billow-sdk-go").
func WithSource(source string) Option { return func(c *Client) { c.source = source } }

// WithRetries sets how often 429, 503 and connection errors are retried (default 4), the first backoff
// (default 200ms, doubling, with jitter) and the longest wait (default 5s; also caps Retry-After).
func WithRetries(retries int, backoff, maxBackoff time.Duration) Option {
	return func(c *Client) { c.retries, c.backoff, c.maxBackoff = retries, backoff, maxBackoff }
}

// New returns a client for the server at baseURL, e.g. "http://127.0.0.1:8888".
func New(baseURL string, opts ...Option) *Client {
	c := &Client{baseURL: strings.TrimRight(baseURL, "/"), source: "billow-sdk-go", http: http.DefaultClient,
		retries: 4, backoff: 200 * time.Millisecond, maxBackoff: 5 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Error is a request Billow refused, with the fields of its RFC 7807 problem. A connection that still fails
// after the retries gives Status 0, Title "Connection failed" and the cause in Err.
type Error struct {
	Status   int
	Type     string
	Title    string
	Detail   string
	Instance string
	Problem  map[string]any // the whole problem document
	Events   []Event        // set by a Batcher: the batch that failed
	Err      error
}

func (e *Error) Error() string { return fmt.Sprintf("billow: %d %s: %s", e.Status, e.Title, e.Detail) }
func (e *Error) Unwrap() error { return e.Err }

// Event is a CloudEvent.
type Event struct {
	SpecVersion string         `json:"specversion"`
	ID          string         `json:"id"`
	Source      string         `json:"source"`
	Type        string         `json:"type"`
	Subject     string         `json:"subject"`
	Time        time.Time      `json:"time"`
	Data        map[string]any `json:"data,omitempty"`
}

// NewEvent makes an event with a new UUID id and the time now; both stay fixed through retries and batching.
func (c *Client) NewEvent(eventType, subject string, data map[string]any) Event {
	return c.complete(Event{Type: eventType, Subject: subject, Data: data})
}

func (c *Client) complete(e Event) Event {
	if e.SpecVersion == "" {
		e.SpecVersion = "1.0"
	}
	if e.ID == "" {
		e.ID = newUUID()
	}
	if e.Source == "" {
		e.Source = c.source
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC().Truncate(time.Millisecond)
	return e
}

// Ingest sends one event; empty id, source, specversion and time are filled in as by NewEvent.
func (c *Client) Ingest(ctx context.Context, e Event) error {
	body, err := json.Marshal(c.complete(e))
	if err != nil {
		return err
	}
	return c.do(ctx, "POST", "/api/v1/events", nil, nil, body, "application/cloudevents+json", true, nil)
}

// IngestBatch sends events as one batch: Billow stores all of them or, if one is invalid, none.
func (c *Client) IngestBatch(ctx context.Context, events []Event) error {
	done := make([]Event, len(events))
	for i, e := range events {
		done[i] = c.complete(e)
	}
	body, err := json.Marshal(done)
	if err != nil {
		return err
	}
	return c.do(ctx, "POST", "/api/v1/events", nil, nil, body, "application/cloudevents-batch+json", true, nil)
}

// Receipt is Billow's ingestion receipt: the batch's events, those accepted as new, the keys of the duplicates
// (already stored, or repeated in the batch: a resent batch lists them all), the ingest time and a digest.
type Receipt struct {
	ID         string    `json:"id"`
	IngestedAt time.Time `json:"ingestedAt"`
	Events     int       `json:"events"`
	Accepted   int       `json:"accepted"`
	Duplicates []struct {
		Source string `json:"source"`
		ID     string `json:"id"`
	} `json:"duplicates"`
	Digest struct {
		Events int    `json:"events"`
		Hash   string `json:"hash"`
	} `json:"digest"`
}

type preferKey struct{}

// IngestBatchWithReceipt sends a batch as IngestBatch does and returns Billow's receipt for it
// (Prefer: return=representation).
func (c *Client) IngestBatchWithReceipt(ctx context.Context, events []Event) (*Receipt, error) {
	done := make([]Event, len(events))
	for i, e := range events {
		done[i] = c.complete(e)
	}
	body, err := json.Marshal(done)
	if err != nil {
		return nil, err
	}
	var out Receipt
	ctx = context.WithValue(ctx, preferKey{}, "return=representation")
	if err := c.do(ctx, "POST", "/api/v1/events", nil, nil, body, "application/cloudevents-batch+json", true, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetReceipt reads an ingestion receipt again by its id (Billow).
func (c *Client) GetReceipt(ctx context.Context, id string) (*Receipt, error) {
	var out Receipt
	if err := c.do(ctx, "GET", "/api/v1/events/receipts/{receiptId}", map[string]string{"receiptId": id}, nil, nil, "", true, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// MeterQuery holds the parameters of a meter query; zero values are left out.
type MeterQuery struct {
	From, To       time.Time
	WindowSize     string // MINUTE, HOUR, DAY or MONTH
	WindowTimeZone string // an IANA zone, e.g. "Europe/Berlin"
	Subject        []string
	GroupBy        []string
	FilterGroupBy  map[string]string
}

// MeterQueryResult is OpenMeter's MeterQueryResult.
type MeterQueryResult struct {
	From       *time.Time      `json:"from,omitempty"`
	To         *time.Time      `json:"to,omitempty"`
	WindowSize string          `json:"windowSize,omitempty"`
	Data       []MeterQueryRow `json:"data"`
}

// MeterQueryRow is one window (and group) of a meter query; Value is exact.
type MeterQueryRow struct {
	Value       json.Number       `json:"value"`
	WindowStart time.Time         `json:"windowStart"`
	WindowEnd   time.Time         `json:"windowEnd"`
	Subject     *string           `json:"subject"`
	CustomerID  string            `json:"customerId,omitempty"`
	GroupBy     map[string]string `json:"groupBy"`
}

// QueryMeter runs GET /api/v1/meters/{slug}/query.
func (c *Client) QueryMeter(ctx context.Context, slug string, q MeterQuery) (*MeterQueryResult, error) {
	v := url.Values{}
	for name, t := range map[string]time.Time{"from": q.From, "to": q.To} {
		if !t.IsZero() {
			v.Set(name, t.UTC().Format(time.RFC3339Nano))
		}
	}
	if q.WindowSize != "" {
		v.Set("windowSize", q.WindowSize)
	}
	if q.WindowTimeZone != "" {
		v.Set("windowTimeZone", q.WindowTimeZone)
	}
	for _, s := range q.Subject {
		v.Add("subject", s)
	}
	for _, g := range q.GroupBy {
		v.Add("groupBy", g)
	}
	for k, val := range q.FilterGroupBy {
		v.Set("filterGroupBy["+k+"]", val)
	}
	out := &MeterQueryResult{}
	err := c.do(ctx, "GET", "/api/v1/meters/{meterIdOrSlug}/query", map[string]string{"meterIdOrSlug": slug}, v,
		nil, "", true, out)
	return out, err
}

// EntitlementValue is OpenMeter's EntitlementValue; the numbers are empty for boolean and static entitlements.
type EntitlementValue struct {
	HasAccess                 bool        `json:"hasAccess"`
	Balance                   json.Number `json:"balance,omitempty"`
	Usage                     json.Number `json:"usage,omitempty"`
	Overage                   json.Number `json:"overage,omitempty"`
	TotalAvailableGrantAmount json.Number `json:"totalAvailableGrantAmount,omitempty"`
	Config                    string      `json:"config,omitempty"`
}

// EntitlementValue checks a subject's access to a feature, now or (if at is not zero) at a time.
func (c *Client) EntitlementValue(ctx context.Context, subject, featureKey string, at time.Time) (*EntitlementValue, error) {
	v := url.Values{}
	if !at.IsZero() {
		v.Set("time", at.UTC().Format(time.RFC3339Nano))
	}
	out := &EntitlementValue{}
	err := c.do(ctx, "GET", "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value",
		map[string]string{"subjectIdOrKey": subject, "entitlementIdOrFeatureKey": featureKey}, v, nil, "", true, out)
	return out, err
}

// PortalTokenRequest is the body of a portal token: AllowedMeterSlugs and ExpiresAt are optional.
type PortalTokenRequest struct {
	Subject           string     `json:"subject"`
	AllowedMeterSlugs []string   `json:"allowedMeterSlugs,omitempty"`
	ExpiresAt         *time.Time `json:"expiresAt,omitempty"`
}

// PortalToken is OpenMeter's PortalToken; Token is shown only when it is created.
type PortalToken struct {
	ID                string    `json:"id"`
	Subject           string    `json:"subject"`
	Token             string    `json:"token"`
	ExpiresAt         time.Time `json:"expiresAt"`
	AllowedMeterSlugs []string  `json:"allowedMeterSlugs"`
	CreatedAt         time.Time `json:"createdAt"`
	Expired           bool      `json:"expired"`
}

// CreatePortalToken makes a customer-portal token. It is not retried after a lost connection: the server may
// have made the token already.
func (c *Client) CreatePortalToken(ctx context.Context, req PortalTokenRequest) (*PortalToken, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out := &PortalToken{}
	err = c.do(ctx, "POST", "/api/v1/portal/tokens", nil, nil, body, "application/json", false, out)
	return out, err
}

// do sends one request, retrying 429 and 503 (and connection errors when idempotent) with the same body.
func (c *Client) do(ctx context.Context, method, path string, pathParams map[string]string, query url.Values,
	body []byte, contentType string, idempotent bool, out any) error {
	for name, value := range pathParams {
		path = strings.ReplaceAll(path, "{"+name+"}", url.PathEscape(value))
	}
	target := c.baseURL + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	for attempt := 0; ; attempt++ {
		last := attempt == c.retries
		var reader io.Reader
		if body != nil {
			reader = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, target, reader)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "billow-sdk-go")
		if body != nil {
			req.Header.Set("Content-Type", contentType)
		}
		if c.apiKey != "" {
			req.Header.Set("Authorization", "Bearer "+c.apiKey)
		}
		if prefer, ok := ctx.Value(preferKey{}).(string); ok {
			req.Header.Set("Prefer", prefer)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			if ctx.Err() != nil || !idempotent || last {
				return &Error{Title: "Connection failed", Detail: err.Error(), Err: err}
			}
			if err := c.wait(ctx, attempt, ""); err != nil {
				return err
			}
			continue
		}
		payload, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return &Error{Status: resp.StatusCode, Title: "Connection failed", Detail: err.Error(), Err: err}
		}
		if resp.StatusCode < 300 {
			if out == nil || len(payload) == 0 {
				return nil
			}
			return json.Unmarshal(payload, out)
		}
		if (resp.StatusCode == 429 || resp.StatusCode == 503) && !last {
			if err := c.wait(ctx, attempt, resp.Header.Get("Retry-After")); err != nil {
				return err
			}
			continue
		}
		return problem(resp.StatusCode, payload)
	}
}

func (c *Client) wait(ctx context.Context, attempt int, retryAfter string) error {
	d := c.backoff << attempt
	if d > c.maxBackoff || d <= 0 {
		d = c.maxBackoff
	}
	d = d/2 + time.Duration(mrand.Int63n(int64(d/2)+1))
	if secs, err := strconv.Atoi(retryAfter); err == nil {
		d = time.Duration(secs) * time.Second
		if d > c.maxBackoff {
			d = c.maxBackoff
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func problem(status int, payload []byte) *Error {
	e := &Error{Status: status, Title: http.StatusText(status), Detail: string(payload)}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if dec.Decode(&e.Problem) != nil || e.Problem == nil {
		return e
	}
	text := func(k string) string { s, _ := e.Problem[k].(string); return s }
	e.Type, e.Instance = text("type"), text("instance")
	if t := text("title"); t != "" {
		e.Title = t
	}
	if d := text("detail"); d != "" {
		e.Detail = d
	}
	return e
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
