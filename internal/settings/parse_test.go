package settings

import (
	"reflect"
	"strings"
	"testing"
)

func TestReadNetstat(t *testing.T) {
	got, err := ReadNetstat("testdata/netstat")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]uint64{
		"TcpExt": {"SyncookiesSent": 0, "SyncookiesRecv": 3, "ListenOverflows": 290566, "ListenDrops": 290570, "TCPTimeWaitOverflow": 12},
		"IpExt":  {"InNoRoutes": 0, "InOctets": 18446744073709551615},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}

	snmp, err := ReadNetstat("testdata/snmp")
	if err != nil {
		t.Fatal(err)
	}
	if got := int64(snmp["Tcp"]["MaxConn"]); got != -1 || snmp["Tcp"]["ActiveOpens"] != 42 {
		t.Errorf("snmp Tcp: MaxConn %d, ActiveOpens %d; want -1 and 42", got, snmp["Tcp"]["ActiveOpens"])
	}
}

func TestReadNetstatMalformed(t *testing.T) {
	for file, want := range map[string]string{
		"netstat_bad_value": "testdata/netstat_bad_value line 2: TcpExt ListenOverflows",
		"netstat_bad_count": "testdata/netstat_bad_count line 4: 1 values for 2 IpExt names",
		"netstat_no_values": "testdata/netstat_no_values line 3: header",
		"netstat_prefix":    "testdata/netstat_prefix line 2:",
		"missing":           "read testdata/missing",
	} {
		_, err := ReadNetstat("testdata/" + file)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one containing %q", file, err, want)
		}
	}
}

func TestReadSoftnet(t *testing.T) {
	got, err := ReadSoftnet("testdata/softnet_stat")
	if err != nil {
		t.Fatal(err)
	}
	want := []SoftnetCPU{
		{CPU: 0, Processed: 0x3a2f1, Dropped: 16, TimeSqueeze: 31},
		{CPU: 2, Processed: 255, Dropped: 1, TimeSqueeze: 0xa00},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for file, want := range map[string]string{
		"softnet_stat_bad":   "testdata/softnet_stat_bad line 2 column 2",
		"softnet_stat_short": "testdata/softnet_stat_short line 2: 1 columns",
	} {
		_, err := ReadSoftnet("testdata/" + file)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one containing %q", file, err, want)
		}
	}
}

func TestReadSoftnetThisKernel(t *testing.T) {
	cpus, err := ReadSoftnet("/proc/net/softnet_stat")
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) == 0 {
		t.Fatal("no CPUs in /proc/net/softnet_stat")
	}
	var processed uint64
	for _, c := range cpus {
		processed += c.Processed
	}
	t.Logf("%d CPUs, %d packets processed", len(cpus), processed)
}

func TestReadStatTable(t *testing.T) {
	got, err := readStatTable("testdata/nf_conntrack")
	if err != nil {
		t.Fatal(err)
	}
	if got["drop"] != 0x1a || got["early_drop"] != 1 || got["insert_failed"] != 3 {
		t.Errorf("drop %d, early_drop %d, insert_failed %d; want 26, 1, 3", got["drop"], got["early_drop"], got["insert_failed"])
	}
}

func TestReadSockstat(t *testing.T) {
	got, err := readSockstat("testdata/sockstat")
	if err != nil {
		t.Fatal(err)
	}
	if got["TCP"]["tw"] != 32768 || got["sockets"]["used"] != 140 {
		t.Errorf("got %v", got)
	}
}

func TestCommas(t *testing.T) {
	for v, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 290566: "290,566", 1234567: "1,234,567"} {
		if got := commas(v); got != want {
			t.Errorf("commas(%d) = %q, want %q", v, got, want)
		}
	}
}
