package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/redpush/redpush/redisq"
)

// pushTimeout bounds the Redis side of a push request: a producer learns
// within it that Redis is down (503) instead of waiting out go-redis's
// retries, and can try another way.
const pushTimeout = time.Second

// pushItem is one message of POST /api/push.
type pushItem struct {
	User pushUser `json:"user"`
	Data *string  `json:"data"` // nil: missing, which is refused, not ""
}

// pushUser is a user id given as a JSON string or integer: PHP and
// JavaScript producers send numeric ids as numbers.
type pushUser string

var integer = regexp.MustCompile(`^-?[0-9]+$`)

func (u *pushUser) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, (*string)(u))
	}
	if !integer.Match(b) {
		return errors.New("user must be a string or an integer")
	}
	*u = pushUser(b)
	return nil
}

// apiPush is POST /api/push for producers that do not speak Redis: it
// LPUSHes through the same key pattern, so delivery is exactly as if the
// producer had pushed itself. The body is one {"user","data"} object or an
// array of them; a batch is pushed in one pipeline, in array order.
func (s *Server) apiPush(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<20))
	if err != nil {
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	items, err := parsePush(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pushTimeout)
	defer cancel()
	p := s.clients.Command.Pipeline()
	for _, it := range items {
		p.LPush(ctx, s.q.Key(string(it.User)), *it.Data)
	}
	if _, err := p.Exec(ctx); err != nil {
		pushFailed(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"queued\":%d}\n", len(items))
}

// pushFailed answers a push that Redis did not confirm within pushTimeout:
// 503, whether it failed before reaching Redis or its answer did not come.
// In the second case Redis may have queued it, so a producer that retries
// gets at-least-once delivery: a message may come twice, never not at all.
func pushFailed(w http.ResponseWriter, err error) {
	http.Error(w, "redis unavailable (the message may or may not have been queued; a retry may queue it twice): "+err.Error(),
		http.StatusServiceUnavailable)
}

// apiKeyOK checks "Authorization: Bearer <key>"; the scheme is
// case-insensitive (RFC 7235 §2.1).
func (s *Server) apiKeyOK(header string) bool {
	scheme, token, ok := strings.Cut(header, " ")
	return ok && strings.EqualFold(scheme, "Bearer") &&
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(s.cfg.APIKey)) == 1
}

func parsePush(body []byte) ([]pushItem, error) {
	var items []pushItem
	var err error
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 && trimmed[0] == '[' {
		err = json.Unmarshal(body, &items)
	} else {
		var one pushItem
		err = json.Unmarshal(body, &one)
		items = []pushItem{one}
	}
	if err != nil {
		return nil, fmt.Errorf("body must be {\"user\":\"42\",\"data\":\"...\"} or an array of them: %v", err)
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("no messages")
	}
	for i, it := range items {
		if !redisq.ValidID(string(it.User)) {
			return nil, fmt.Errorf("message %d: %v", i, errBadUserID)
		}
		if it.Data == nil {
			return nil, fmt.Errorf("message %d: data missing (a string; \"\" for an empty message)", i)
		}
	}
	return items, nil
}
