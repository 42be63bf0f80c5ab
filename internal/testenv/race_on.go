//go:build race

package testenv

// raceEnabled: the test binary runs under the race detector, so the
// tapproxy binary under test is built with -race too.
const raceEnabled = true
