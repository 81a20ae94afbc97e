package redisq_test

import (
	"context"
	"errors"
	"testing"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
)

func TestURLFormsPickTheTopology(t *testing.T) {
	for url, want := range map[string]string{
		"redis://127.0.0.1:6379/0":                                  "server",
		"rediss://user:pw@redis.example:6380":                       "server",
		"unix:///run/redis.sock":                                    "server",
		"redis://s1:26379?master_name=mymaster":                     "sentinel",
		"redis://s1:26379?master_name=mymaster&addr=s2:26379":       "sentinel",
		"redis://n1:7000?addr=n2:7000&addr=n3:7000":                 "cluster",
		"rediss://n1:7000?addr=n2:7000&dial_timeout=3s&pool_size=8": "cluster",
	} {
		ep, err := redisq.ParseEndpoint(url)
		if err != nil || ep.Topology() != want {
			t.Errorf("%s: %q %v, want %q", url, ep.Topology(), err, want)
		}
	}
	for _, url := range []string{
		"http://x", "redis://h:1?bogus=1", "redis://h:1?master_name=m&bogus=1",
		"redis://h:1?addr=h:2&bogus=1", "unix://?addr=x",
	} {
		if _, err := redisq.ParseEndpoint(url); !errors.Is(err, redisq.ErrBadURL) {
			t.Errorf("%s: %v, want ErrBadURL", url, err)
		}
	}
}

// A plain URL of one node of a cluster is served as the cluster.
func TestDialDetectsAClusterNode(t *testing.T) {
	cl := testutil.StartCluster(t)
	for url, want := range map[string]string{cl.Nodes[1].URL(): "cluster", cl.URL(): "cluster"} {
		c, err := redisq.Dial(context.Background(), url, 2)
		if err != nil {
			t.Fatal(err)
		}
		if c.Topology != want {
			t.Errorf("%s: topology %q, want %q", url, c.Topology, want)
		}
		c.Close()
	}
}

func TestDialSentinel(t *testing.T) {
	sn := testutil.StartSentinel(t)
	c, err := redisq.Dial(context.Background(), sn.URL(), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Topology != "sentinel" {
		t.Errorf("topology %q, want sentinel", c.Topology)
	}
	if err := c.Command.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := sn.Master.Client().Get(context.Background(), "k").Val(); got != "v" {
		t.Errorf("the master holds %q, want the value written through the Sentinel URL", got)
	}
}
