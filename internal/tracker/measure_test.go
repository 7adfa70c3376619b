package tracker

import (
	"database/sql"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	_ "modernc.org/sqlite"
)

func TestMeasureEncoding(t *testing.T) {
	if os.Getenv("MEASURE") == "" {
		t.Skip()
	}
	r := rand.New(rand.NewSource(1))
	pool := make([]string, 200000)
	for i := range pool {
		b := make([]byte, 20)
		r.Read(b)
		pool[i] = nixbase32.EncodeToString(b)
	}
	for _, blob := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "m.db")
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)")
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		typ := "TEXT"
		if blob {
			typ = "BLOB"
		}
		for _, q := range []string{
			`CREATE TABLE peers(id INTEGER PRIMARY KEY, peer_id TEXT NOT NULL UNIQUE, last_seen INTEGER NOT NULL)`,
			`CREATE TABLE packages(hash ` + typ + ` NOT NULL, peer INTEGER NOT NULL REFERENCES peers(id) ON DELETE CASCADE, PRIMARY KEY(hash, peer)) WITHOUT ROWID`,
			`CREATE INDEX packages_peer ON packages(peer)`,
		} {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		const peers, per = 100, 50000
		for p := 0; p < peers; p++ {
			tx, _ := db.Begin()
			tx.Exec(`INSERT INTO peers(id, peer_id, last_seen) VALUES(?, ?, ?)`, p+1, fmt.Sprintf("peer%d", p), time.Now().UnixMilli())
			st, _ := tx.Prepare(`INSERT OR IGNORE INTO packages(hash, peer) VALUES(?, ?)`)
			for _, i := range r.Perm(len(pool))[:per] {
				var h any = pool[i]
				if blob {
					h, _ = nixbase32.DecodeString(pool[i])
				}
				if _, err := st.Exec(h, p+1); err != nil {
					t.Fatal(err)
				}
			}
			st.Close()
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		ins := time.Since(start)
		db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
		fi, _ := os.Stat(path)
		st, _ := db.Prepare(`SELECT p.peer_id FROM packages k JOIN peers p ON p.id = k.peer WHERE k.hash = ? AND p.last_seen >= ?`)
		start = time.Now()
		n := 0
		const lookups = 20000
		for i := 0; i < lookups; i++ {
			var h any = pool[r.Intn(len(pool))]
			if blob {
				h, _ = nixbase32.DecodeString(h.(string))
			}
			rows, err := st.Query(h, 0)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				n++
			}
			rows.Close()
		}
		find := time.Since(start) / lookups
		start = time.Now()
		tx, _ := db.Begin()
		tx.Exec(`DELETE FROM packages WHERE peer = 7`)
		tx.Commit()
		del := time.Since(start)
		t.Logf("blob=%v rows=%d insert=%v (%.0f rows/s) size=%.1f MiB (%.1f B/row) find=%v avg %d holders; delete peer=%v",
			blob, peers*per, ins, float64(peers*per)/ins.Seconds(), float64(fi.Size())/(1<<20), float64(fi.Size())/float64(peers*per), find, n/lookups, del)
		db.Close()
	}
}
