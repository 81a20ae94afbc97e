package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/redpush/redpush/redisq"
)

// maxPresenceUsers bounds the ids of one POST /api/presence.
const maxPresenceUsers = 1000

// presenceAnswer is one user's presence on the wire.
type presenceAnswer struct {
	Online      bool `json:"online"`
	Connections int  `json:"connections"`
}

// apiPresence is GET /api/presence?user=42: is the user online, on any
// instance, and with how many connections.
func (s *Server) apiPresence(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	user := r.URL.Query().Get("user")
	if !redisq.ValidID(user) {
		http.Error(w, "user: "+errBadUserID.Error(), http.StatusBadRequest)
		return
	}
	got, ok := s.readPresence(r.Context(), w, []string{user})
	if !ok {
		return
	}
	writeJSON(w, struct {
		User string `json:"user"`
		presenceAnswer
	}{user, got[user]})
}

// apiPresenceMany is POST /api/presence with a JSON array of up to 1,000
// user ids (strings or integers).
func (s *Server) apiPresenceMany(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, "body over 1 MiB", http.StatusRequestEntityTooLarge)
		return
	case err != nil:
		http.Error(w, "body unreadable: "+err.Error(), http.StatusBadRequest)
		return
	}
	var ids []pushUser
	if err := json.Unmarshal(body, &ids); err != nil {
		http.Error(w, fmt.Sprintf("body must be a JSON array of user ids, such as [\"42\",\"43\"]: %v", err), http.StatusBadRequest)
		return
	}
	if len(ids) > maxPresenceUsers {
		http.Error(w, fmt.Sprintf("%d user ids; at most %d per request", len(ids), maxPresenceUsers), http.StatusBadRequest)
		return
	}
	users := make([]string, len(ids))
	for i, id := range ids {
		if users[i] = string(id); !redisq.ValidID(users[i]) {
			http.Error(w, fmt.Sprintf("user %d: %v", i, errBadUserID), http.StatusBadRequest)
			return
		}
	}
	got, ok := s.readPresence(r.Context(), w, users)
	if !ok {
		return
	}
	writeJSON(w, struct {
		Users map[string]presenceAnswer `json:"users"`
	}{got})
}

// apiAuthorized answers 401 unless the request carries the API key.
func (s *Server) apiAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if s.apiKeyOK(r.Header.Get("Authorization")) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="redpush"`)
	http.Error(w, "missing or wrong API key", http.StatusUnauthorized)
	return false
}

// readPresence reads users' presence, or answers 503.
func (s *Server) readPresence(ctx context.Context, w http.ResponseWriter, users []string) (map[string]presenceAnswer, bool) {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	ps, err := s.q.ReadPresence(ctx, users)
	if err != nil {
		http.Error(w, "redis unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return nil, false
	}
	out := make(map[string]presenceAnswer, len(users))
	for i, u := range users {
		out[u] = presenceAnswer{Online: ps[i].Online, Connections: ps[i].Connections}
	}
	return out, true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
