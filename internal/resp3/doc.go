// Package resp3 reads and writes the RESP3 protocol of Redis, as far as a
// connection that receives out-of-band pushes between its replies needs:
// commands out (arrays of bulk strings), any reply or push in.
//
// go-redis v9 cannot be that connection: it hands a RESP3 push to its push
// processor only when it reads the reply of a command on the same
// connection, so a push on an idle connection waits for the next command
// (docs/consumption.md, finding 6). redisq's hint connection reads
// continuously and needs to see each push as it comes, hence this reader.
package resp3
