package main

import "strconv"

// The final accounting matches every message sent, by user and sequence
// number, against what the user's connections received and what Redis
// still holds. Nothing is inferred from totals: a duplicate still in Redis
// cannot hide a loss of the same user.

// tally is the per-message outcome of a run.
type tally struct {
	sent    int64    // LPUSHes that reached Redis (or may have, and left a trace)
	unsent  int64    // LPUSHes that failed and left no trace: never pushed
	lost    int64    // sent, received by no connection of the user, not in Redis
	partial int64    // (connection, message) pairs: a message another connection of the user got and this one did not
	lostIDs []string // the first lost messages, as user/seq
	// lostRange is, per user with losses, how many and the first and last
	// sequence number lost.
	lostRange map[string][3]int64
}

// account matches per user. conns maps a user to the sets of sequence
// numbers each of its connections received.
func account(users []string, sent []int64, uncertain []bitset, conns map[string][]*bitset, left leftovers) tally {
	var t tally
	for i, user := range users {
		var got bitset // received by any connection of the user
		for _, c := range conns[user] {
			got.or(*c)
		}
		inRedis := left.seqs[user]
		for seq := range sent[i] {
			seen := got.has(seq) || inRedis != nil && inRedis.has(seq)
			switch {
			case !seen && uncertain[i].has(seq):
				t.unsent++
				continue
			case !seen:
				t.lost++
				if len(t.lostIDs) < 20 {
					t.lostIDs = append(t.lostIDs, user+"/"+strconv.FormatInt(seq, 10))
				}
				if t.lostRange == nil {
					t.lostRange = map[string][3]int64{}
				}
				r, ok := t.lostRange[user]
				if !ok {
					r[1] = seq
				}
				r[0]++
				r[2] = seq
				t.lostRange[user] = r
			}
			t.sent++
			if !got.has(seq) {
				continue
			}
			for _, c := range conns[user] {
				if !c.has(seq) {
					t.partial++
				}
			}
		}
	}
	return t
}
