//go:build race

package tracker

// raceEnabled: under the race detector the pure-Go SQLite runs about 50
// times slower, so tests with very large sets stay out of -race runs.
const raceEnabled = true
