package config

import (
	"fmt"
	"strings"
	"testing"
)

// bigConfig returns a configuration of n farms of two backends.
func bigConfig(tb testing.TB, n int) *Config {
	tb.Helper()
	var b strings.Builder
	b.WriteString("farms:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: farm%d\n    address: 10.%d.%d.1\n    ports: [\"80\"]\n    health: {type: tcp}\n    backends:\n"+
			"      - {name: b0, address: 10.200.%d.%d, port: 80, weight: 1}\n      - {name: b1, address: 10.201.%d.%d, port: 80, weight: 2}\n",
			i, i/256, i%256, i/256, i%256, i/256, i%256)
	}
	return mustParse(tb, "big.yaml", b.String())
}

// go test -run '^$' -bench . ./agent/config/
func BenchmarkParseAndValidate10k(b *testing.B) {
	data := bigConfig(b, 10000).EncodeYAML()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseAndValidate("big.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal10k(b *testing.B) {
	c := bigConfig(b, 10000)
	for b.Loop() {
		c.EncodeYAML()
	}
}

// What a single-file API change encodes: one farm, then the file
// assembled from the kept fragments.
func BenchmarkAssembleOneChanged10k(b *testing.B) {
	c := bigConfig(b, 10000)
	frags := make([][]byte, len(c.Farms))
	for i := range c.Farms {
		frags[i] = c.Farms[i].Fragment("big.yaml")
	}
	for b.Loop() {
		frags[42] = c.Farms[42].Fragment("big.yaml")
		c.Assemble("big.yaml", frags)
	}
}

// What a directory-mode API change encodes, and a reload of one file
// parses.
func BenchmarkFarmFile(b *testing.B) {
	c := bigConfig(b, 1)
	for b.Loop() {
		data := c.Farms[0].MarshalFarmFile("farm0.yaml")
		f, err := ParseFarmFile("farm0.yaml", data)
		if err == nil {
			err = ValidateFarm(&f, c.LBOptions())
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
