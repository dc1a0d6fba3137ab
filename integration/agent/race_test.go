//go:build race

package agent_test

// raceEnabled builds the l4nft binary with the race detector when the
// tests themselves run with -race, so that the agent's daemon is checked
// too; a race report in its output fails the test.
const raceEnabled = true
