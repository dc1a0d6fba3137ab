package lb

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestApportionGivesSharesWithinOneSlot(t *testing.T) {
	for _, weights := range [][]int{{1}, {1, 2}, {1, 2, 3, 4}, {1, 1000}, {10000, 1, 7, 7}, {1, 1, 1}} {
		got := apportion(weights, scheduleSlots)
		total, sum := 0, 0
		for _, w := range weights {
			total += w
		}
		for i, n := range got {
			sum += int(n)
			exact := float64(scheduleSlots) * float64(weights[i]) / float64(total)
			if d := float64(n) - exact; d <= -1 || d >= 1 || n == 0 {
				t.Errorf("weights %v: backend %d has %d slots, exact share %.2f", weights, i, n, exact)
			}
		}
		if sum != scheduleSlots {
			t.Errorf("weights %v: %d slots given, want %d", weights, sum, scheduleSlots)
		}
	}
	// A share too small for one slot still gets one.
	if got := apportion([]int{1, 1 << 30}, 16); got[0] != 1 || got[1] != 15 {
		t.Errorf("apportion tiny share = %v, want [1 15]", got)
	}
}

// farms returns a state of n farms of two backends each.
func farms(n int) State {
	var s State
	for i := range n {
		f := validFarm(fmt.Sprintf("f%d", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 250)}).String())
		f.Ports = []PortRange{Port(uint16(1000 + i))}
		s.Farms = append(s.Farms, f)
	}
	return s
}

func sortedState(s State) State {
	s = cloneState(s)
	byName := map[string]Farm{}
	for _, f := range s.Farms {
		byName[f.Name] = f
	}
	var out State
	for _, n := range sortedKeys(byName) {
		f := byName[n]
		bs := map[string]Backend{}
		for _, b := range f.Backends {
			bs[b.Name] = b
		}
		f.Backends = nil
		for _, bn := range sortedKeys(bs) {
			f.Backends = append(f.Backends, bs[bn])
		}
		out.Farms = append(out.Farms, f)
	}
	return out
}

func TestRenderShowsSeedAndTranslation(t *testing.T) {
	s := State{Farms: []Farm{validFarm("web", "198.51.100.250")}}
	// Marks are derived from names, the same in every process.
	t0 := newMarkTable(Options{}.withDefaults())
	web, app0, app1 := t0.home(objectKey{"web", ""})<<8, t0.home(objectKey{"web", "app0"})<<8, t0.home(objectKey{"web", "app1"})<<8
	out, err := Render(s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"table inet l4nft {",
		"ct mark set ct mark . numgen random mod 16777216 map @schedule",
		"ct state new jump choose_backend",
		fmt.Sprintf("%s . 0-5592404 comment \"web/app0\" : %s", markText(web), markText(app0)),
		fmt.Sprintf("%s . 5592405-16777215 comment \"web/app1\" : %s", markText(web), markText(app1)),
		fmt.Sprintf("198.51.100.250 . tcp . 443 comment \"farm=web\" : %s", markText(web)),
		fmt.Sprintf("%s comment \"farm=web mode=nat scheduler=weight\"", markText(web)),
		fmt.Sprintf("%s : 203.0.113.10 . 443", markText(app0)),
		fmt.Sprintf("%s comment \"backend=web/app0 weight=1 state=up\"", markText(app0)),
		"type filter hook prerouting priority -199; policy accept;",
		"dnat ip to ct mark & 0xffffff00 map @dnat4",
		"ct mark & 0xffffff00 @masq_backends masquerade",
		"meta l4proto tcp ct mark & 0xffffff00 @farms reject with tcp reset",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Render() lacks %q", want)
		}
	}
	again, _ := Render(s, Options{})
	if again != out {
		t.Error("Render() is not deterministic")
	}
	if _, err := Render(State{Farms: []Farm{{Name: "bad"}}}, Options{}); err == nil {
		t.Error("Render() of an invalid state succeeded")
	}
}
