package server

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/redpush/redpush/redisq"
)

// pushItem is one message of POST /api/push.
type pushItem struct {
	User string `json:"user"`
	Data string `json:"data"`
}

// apiPush is POST /api/push for producers that do not speak Redis: it
// LPUSHes through the same key pattern, so delivery is exactly as if the
// producer had pushed itself. The body is one {"user","data"} object or an
// array of them; a batch is pushed in one pipeline, in array order.
func (s *Server) apiPush(w http.ResponseWriter, r *http.Request) {
	if !s.apiKeyOK(r.Header.Get("Authorization")) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="redpush"`)
		http.Error(w, "missing or wrong API key", http.StatusUnauthorized)
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
	p := s.clients.Command.Pipeline()
	for _, it := range items {
		p.LPush(r.Context(), s.q.Key(it.User), it.Data)
	}
	if _, err := p.Exec(r.Context()); err != nil {
		http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"queued\":%d}\n", len(items))
}

func (s *Server) apiKeyOK(header string) bool {
	token, ok := strings.CutPrefix(header, "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.APIKey)) == 1
}

func parsePush(body []byte) ([]pushItem, error) {
	var items []pushItem
	trimmed := strings.TrimSpace(string(body))
	var err error
	if strings.HasPrefix(trimmed, "[") {
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
		if !redisq.ValidID(it.User) {
			return nil, fmt.Errorf("message %d: %v", i, errBadUserID)
		}
	}
	return items, nil
}
