package fstrm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listFiles returns the names in dir, sorted.
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// checkSeqs verifies that the files together hold frames 0..n-1 exactly
// once, each file in increasing order.
func checkSeqs(t *testing.T, files map[string]parsedFile, n int) {
	t.Helper()
	seen := make(map[int]string)
	for name, pf := range files {
		prev := -1
		for _, fr := range pf.frames {
			s := frameSeq(t, fr)
			if s <= prev {
				t.Errorf("%s: frame %d after %d", name, s, prev)
			}
			prev = s
			if other, dup := seen[s]; dup {
				t.Errorf("frame %d in %s and %s", s, other, name)
			}
			seen[s] = name
		}
	}
	for i := range n {
		if _, ok := seen[i]; !ok {
			t.Errorf("frame %d lost", i)
		}
	}
	if len(seen) != n {
		t.Errorf("files hold %d distinct frames, want %d", len(seen), n)
	}
}

func TestFileRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	w, err := NewFileWriter(FileOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var want [][]byte
	for i := range n {
		fr := dnstapFrame(t, i)
		want = append(want, fr)
		if err := w.WriteFrame(fr); err != nil {
			t.Fatalf("WriteFrame %d: %v", i, err)
		}
		if i == n/2 {
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(want[0]); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteFrame after Close: %v, want ErrClosed", err)
	}
	if st := w.Stats(); st.Frames != n || st.FramesLost != 0 || st.WriteErrors != 0 {
		t.Errorf("stats %+v", st)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	pf := readFileStrict(t, path, false)
	if !pf.hasStop || len(pf.frames) != n {
		t.Fatalf("strict parse: %d frames, stop %v", len(pf.frames), pf.hasStop)
	}
	for i := range want {
		if !bytes.Equal(pf.frames[i], want[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
	got := readFileFramestream(t, path)
	if len(got) != n {
		t.Fatalf("golang-framestream read %d frames, want %d", len(got), n)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("golang-framestream frame %d differs", i)
		}
	}
	if c := dnstapCLICount(t, path); c != n {
		t.Errorf("dnstap -y read %d messages, want %d", c, n)
	}
	if c, ct := fstrmDumpCount(t, path); c != n || ct != ContentType {
		t.Errorf("fstrm_dump: %d frames, content type %q", c, ct)
	}
	if c := validateFile(t, path, false); c != n {
		t.Errorf("validator total %d, want %d", c, n)
	}
}

func TestFileFrameSize(t *testing.T) {
	w, err := NewFileWriter(FileOptions{Path: filepath.Join(t.TempDir(), "x.fstrm"), MaxFrameSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"empty frame would read as an escape", nil, ErrFrameSize},
		{"over MaxFrameSize", make([]byte, 101), ErrFrameSize},
		{"at MaxFrameSize", bytes.Repeat([]byte{1}, 100), nil},
	} {
		if err := w.WriteFrame(tc.p); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestFileRotateBySize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	const maxSize = 2048
	w, err := NewFileWriter(FileOptions{Path: path, MaxSize: maxSize, BufferSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	for i := range n {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatalf("WriteFrame %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	names := listFiles(t, dir)
	if len(names) < 3 {
		t.Fatalf("want several files, got %v", names)
	}
	if got := w.Stats().Rotations; got != uint64(len(names)-1) {
		t.Errorf("Rotations %d with %d files", got, len(names))
	}
	rotated := regexp.MustCompile(`^dns\.fstrm\.\d{8}T\d{6}Z(\.\d+)?$`)
	files := map[string]parsedFile{}
	total := 0
	var paths []string
	for _, name := range names {
		p := filepath.Join(dir, name)
		paths = append(paths, p)
		if name != "dns.fstrm" && !rotated.MatchString(name) {
			t.Errorf("unexpected file name %q", name)
		}
		fi, _ := os.Stat(p)
		if fi.Size() > maxSize {
			t.Errorf("%s: %d bytes > MaxSize %d", name, fi.Size(), maxSize)
		}
		pf := readFileStrict(t, p, false)
		files[name] = pf
		total += len(pf.frames)
	}
	for p, c := range validateAll(t, paths, false) {
		if want := len(files[filepath.Base(p)].frames); c != want {
			t.Errorf("%s: validator %d, parser %d", p, c, want)
		}
	}
	if total != n {
		t.Errorf("%d frames in all files, want %d", total, n)
	}
	checkSeqs(t, files, n)
}

func TestFileRotateByAge(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	clk := newFakeClock()
	seams := defaultFileSeams()
	seams.now = clk.now
	w, err := newFileWriter(FileOptions{Path: path, MaxAge: time.Minute}, seams)
	if err != nil {
		t.Fatal(err)
	}
	// Idle: a file without frames is never rotated by age.
	clk.advance(time.Hour)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := w.Stats().Rotations; r != 0 {
		t.Fatalf("idle empty file rotated %d times", r)
	}
	const n = 18
	for i := range n {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatal(err)
		}
		clk.advance(10 * time.Second)
	}
	// The age is checked on Flush too: the last file is 60 s old by now.
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Frames at 0,10,...,50 s go to the first file; the one at 60 s
	// rotates: files of 6 frames, and Flush at the end rotates the last.
	st := w.Stats()
	if st.Rotations != n/6 {
		t.Errorf("Rotations = %d, want %d", st.Rotations, n/6)
	}
	files := map[string]parsedFile{}
	var rotatedPaths []string
	for _, name := range listFiles(t, dir) {
		p := filepath.Join(dir, name)
		pf := readFileStrict(t, p, false)
		files[name] = pf
		if name == "dns.fstrm" {
			if len(pf.frames) != 0 {
				t.Errorf("current file holds %d frames, want 0", len(pf.frames))
			}
			continue
		}
		if len(pf.frames) != 6 {
			t.Errorf("%s: %d frames, want 6", name, len(pf.frames))
		}
		rotatedPaths = append(rotatedPaths, p)
	}
	for p, c := range validateAll(t, rotatedPaths, false) {
		if c != 6 {
			t.Errorf("%s: validator %d, want 6", p, c)
		}
	}
	if len(files) != n/6+1 {
		t.Errorf("%d files, want %d", len(files), n/6+1)
	}
	checkSeqs(t, files, n)
}

// TestFileReopenContinuous calls Reopen from another goroutine while the
// writer goroutine writes, half the time after renaming the file the way
// logrotate does. No frame may be lost or duplicated and every file must be
// complete.
func TestFileReopenContinuous(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	w, err := NewFileWriter(FileOptions{Path: path, BufferSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	const n, every = 3000, 250
	kick := make(chan int)
	done := make(chan struct{})
	var renamed atomic.Int64
	go func() {
		defer close(done)
		for k := range kick {
			if k%2 == 0 {
				// logrotate: rename, then SIGHUP. The writer may not have
				// recreated the file since the last Reopen yet: then there
				// is nothing to rename.
				if err := os.Rename(path, fmt.Sprintf("%s.logrotate.%d", path, k)); err == nil {
					renamed.Add(1)
				}
			}
			w.Reopen()
		}
	}()
	for i := range n {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatalf("WriteFrame %d: %v", i, err)
		}
		if i%every == every-1 {
			kick <- i / every
		}
	}
	close(kick)
	<-done
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Reopens == 0 || st.Frames != n || st.FramesLost != 0 {
		t.Fatalf("stats %+v", st)
	}
	files := map[string]parsedFile{}
	total := 0
	for _, name := range listFiles(t, dir) {
		p := filepath.Join(dir, name)
		pf := readFileStrict(t, p, false)
		files[name] = pf
		total += len(pf.frames)
	}
	if total != n {
		t.Errorf("%d frames in %d files, want %d", total, len(files), n)
	}
	checkSeqs(t, files, n)
	// Reopens that found the file still at Path rotated it; the others
	// (renamed away) did not leave it at Path. Either way one file per
	// Reopen plus the current one, unless Reopen requests coalesced.
	if uint64(len(files)) != st.Reopens+1 {
		t.Errorf("%d files after %d reopens", len(files), st.Reopens)
	}
	if renamed.Load() == 0 {
		t.Errorf("no logrotate-style rename happened")
	}
	// The external validator on a sample: the first, a renamed one, the last.
	names := listFiles(t, dir)
	sample := []string{filepath.Join(dir, names[0]), filepath.Join(dir, names[len(names)/2]), filepath.Join(dir, names[len(names)-1])}
	for p, c := range validateAll(t, sample, false) {
		if want := len(files[filepath.Base(p)].frames); c != want {
			t.Errorf("%s: validator %d, parser %d", p, c, want)
		}
	}
}

// TestFileCrashLeavesWholeFrames checks, after every WriteFrame of a writer
// that is never closed, that the bytes on disk are START plus whole frames:
// what a kill -9 at that moment would leave. Then a new writer at the same
// path moves the torn file aside.
func TestFileCrashLeavesWholeFrames(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	w, err := NewFileWriter(FileOptions{Path: path, BufferSize: 700})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.f.Close() }) // the "crashed" writer's fd
	const n = 300
	for i := range n {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pf, err := parseStrict(b, true)
		if err != nil {
			t.Fatalf("after frame %d the file is not whole frames: %v", i, err)
		}
		if uint64(len(pf.frames)) != w.Stats().Frames {
			t.Fatalf("after frame %d: %d frames on disk, Stats says %d", i, len(pf.frames), w.Stats().Frames)
		}
	}
	written := int(w.Stats().Frames)
	if written == 0 || written == n {
		t.Fatalf("test needs some frames written and some buffered, got %d of %d written", written, n)
	}
	snapshot := filepath.Join(t.TempDir(), "snapshot.fstrm")
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(snapshot, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readFileFramestream(t, snapshot); len(got) != written {
		t.Errorf("golang-framestream read %d frames, want %d", len(got), written)
	}
	if c := validateFile(t, snapshot, true); c != written {
		t.Errorf("validator %d, want %d", c, written)
	}

	// Restart: the torn file must be moved aside, not appended to.
	w2, err := NewFileWriter(FileOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if st := w2.Stats(); st.MovedTorn != 1 || st.MovedAside != 0 {
		t.Errorf("restart stats %+v", st)
	}
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	torn := regexp.MustCompile(`^dns\.fstrm\.\d{8}T\d{6}Z\.torn$`)
	var found bool
	for _, name := range listFiles(t, dir) {
		if torn.MatchString(name) {
			found = true
			got, _ := os.ReadFile(filepath.Join(dir, name))
			if !bytes.Equal(got, b) {
				t.Errorf("torn file changed when moved aside")
			}
		}
	}
	if !found {
		t.Errorf("no .torn file in %v", listFiles(t, dir))
	}
	if pf := readFileStrict(t, path, false); len(pf.frames) != 0 {
		t.Errorf("new file holds %d frames", len(pf.frames))
	}
}

// TestHelperKill9Child is the child process of TestFileKill9; it does
// nothing in a normal test run.
func TestHelperKill9Child(t *testing.T) {
	path := os.Getenv("FSTRM_KILL9_PATH")
	if path == "" {
		return
	}
	w, err := NewFileWriter(FileOptions{Path: path, BufferSize: 1000})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for i := range 500 {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	fmt.Println(w.Stats().Frames)
	// Wait to be killed; never Close.
	var b [1]byte
	_, _ = os.Stdin.Read(b[:])
	os.Exit(3)
}

// TestFileKill9 kills a real writer process with SIGKILL: the file must hold
// exactly the frames it had written, all whole, and a restart moves it aside.
func TestFileKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKill9Child$")
	cmd.Env = append(os.Environ(), "FSTRM_KILL9_PATH="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := readLine(stdout)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child: %v", err)
	}
	written, err := strconv.Atoi(line)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child said %q", line)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if written == 0 || written == 500 {
		t.Fatalf("child wrote %d of 500 frames; the test needs some buffered", written)
	}
	pf := readFileStrict(t, path, true)
	if pf.hasStop || len(pf.frames) != written {
		t.Fatalf("after kill -9: %d whole frames (stop %v), child had written %d", len(pf.frames), pf.hasStop, written)
	}
	for i, fr := range pf.frames {
		if s := frameSeq(t, fr); s != i {
			t.Fatalf("frame %d has seq %d", i, s)
		}
	}
	if c := validateFile(t, path, true); c != written {
		t.Errorf("validator %d, want %d", c, written)
	}
	w, err := NewFileWriter(FileOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.MovedTorn != 1 {
		t.Errorf("torn file not moved aside: %+v", st)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFileExistingCompleteMovedAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	w, err := NewFileWriter(FileOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w2, err := NewFileWriter(FileOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if st := w2.Stats(); st.MovedAside != 1 || st.MovedTorn != 0 {
		t.Errorf("stats %+v", st)
	}
	names := listFiles(t, dir)
	if len(names) != 2 || !regexp.MustCompile(`^dns\.fstrm\.\d{8}T\d{6}Z$`).MatchString(names[1]) {
		t.Fatalf("files %v", names)
	}
	if pf := readFileStrict(t, filepath.Join(dir, names[1]), false); len(pf.frames) != 4 {
		t.Errorf("moved file holds %d frames", len(pf.frames))
	}
}

func TestAsideNameCollisions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	mtime := time.Date(2026, 11, 27, 12, 34, 56, 0, time.FixedZone("CET", 3600))
	w := &FileWriter{opts: FileOptions{Path: path}, log: orDiscard(nil), stop: encodeControl(controlStop, "")}
	for i, tc := range []struct {
		content []byte
		want    string
	}{
		{append(encodeControl(controlStart, ContentType), w.stop...), "dns.fstrm.20261127T113456Z"},
		{append(encodeControl(controlStart, ContentType), w.stop...), "dns.fstrm.20261127T113456Z.1"},
		{encodeControl(controlStart, ContentType), "dns.fstrm.20261127T113456Z.torn"},
		{nil, "dns.fstrm.20261127T113456Z.1.torn"},
		{append(encodeControl(controlStart, ContentType), w.stop...), "dns.fstrm.20261127T113456Z.2"},
	} {
		if err := os.WriteFile(path, tc.content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Lstat(path)
		if err := w.moveAside(fi); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if _, err := os.Stat(filepath.Join(dir, tc.want)); err != nil {
			t.Errorf("case %d: %s not created: %v (have %v)", i, tc.want, err, listFiles(t, dir))
		}
	}
}

func TestFileRefusesNonRegularPath(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		setup func(p string) error
	}{
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"symlink", func(p string) error { return os.Symlink("/dev/null", p) }},
	} {
		p := filepath.Join(dir, tc.name)
		if err := tc.setup(p); err != nil {
			t.Fatal(err)
		}
		if w, err := NewFileWriter(FileOptions{Path: p}); err == nil {
			_ = w.Close()
			t.Errorf("%s at Path accepted", tc.name)
		}
	}
	if _, err := NewFileWriter(FileOptions{Path: filepath.Join(dir, "missing-dir", "x")}); err == nil {
		t.Errorf("missing directory accepted")
	}
}

// faultyDisk is an injected write(2): while full, it writes half of the
// buffer and fails with ENOSPC, as a filling disk does.
type faultyDisk struct {
	full  bool
	calls int
}

func (d *faultyDisk) write(f *os.File, b []byte) (int, error) {
	d.calls++
	if !d.full {
		return f.Write(b)
	}
	n, err := f.Write(b[:len(b)/2])
	if err != nil {
		return n, err
	}
	return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
}

func TestFileDiskFullInjected(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	clk := newFakeClock()
	disk := &faultyDisk{}
	seams := fileSeams{now: clk.now, write: disk.write}
	w, err := newFileWriter(FileOptions{Path: path, BufferSize: 1024, RetryInterval: time.Second}, seams)
	if err != nil {
		t.Fatal(err)
	}
	seq, accepted := 0, 0
	write := func() error {
		err := w.WriteFrame(dnstapFrame(t, seq))
		seq++
		if err == nil {
			accepted++
		}
		return err
	}
	for range 20 {
		if err := write(); err != nil {
			t.Fatal(err)
		}
	}
	disk.full = true
	var ferr error
	for range 1000 {
		if ferr = write(); ferr != nil {
			break
		}
	}
	if !errors.Is(ferr, ErrUnavailable) || !errors.Is(ferr, syscall.ENOSPC) {
		t.Fatalf("disk full: WriteFrame error %v, want ErrUnavailable wrapping ENOSPC", ferr)
	}
	if !w.Stats().Failing {
		t.Fatal("Stats().Failing not set")
	}
	// The partial write was cut back: the file is whole frames.
	if pf := readFileStrict(t, path, true); uint64(len(pf.frames)) != w.Stats().Frames {
		t.Fatalf("%d frames on disk, Stats %d", len(pf.frames), w.Stats().Frames)
	}
	// No busy loop: until RetryInterval has passed nothing touches the disk.
	calls := disk.calls
	for range 1000 {
		if err := write(); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("while failing: %v", err)
		}
		_ = w.Flush()
	}
	if disk.calls != calls {
		t.Fatalf("%d writes attempted before RetryInterval", disk.calls-calls)
	}
	// One attempt per interval while the disk stays full.
	clk.advance(time.Second)
	if err := write(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("retry on full disk: %v", err)
	}
	if disk.calls != calls+1 {
		t.Fatalf("%d writes in one retry, want 1", disk.calls-calls)
	}
	// Space returns: the next retry recovers and frames flow again.
	disk.full = false
	clk.advance(time.Second)
	for range 20 {
		if err := write(); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Recoveries != 1 || st.FramesLost != 0 || st.Failing || st.Frames != uint64(accepted) {
		t.Errorf("stats %+v, accepted %d", st, accepted)
	}
	pf := readFileStrict(t, path, false)
	if len(pf.frames) != accepted {
		t.Fatalf("%d frames in file, %d accepted", len(pf.frames), accepted)
	}
	prev := -1
	for _, fr := range pf.frames {
		s := frameSeq(t, fr)
		if s <= prev {
			t.Fatalf("frame %d after %d", s, prev)
		}
		prev = s
	}
	if c := validateFile(t, path, false); c != accepted {
		t.Errorf("validator %d, accepted %d", c, accepted)
	}
}

// TestFileDiskFullAtClose: the disk stays full through Close. The buffered
// frames are counted lost, STOP cannot be written, and the file, cut back to
// whole frames, is moved aside as torn.
func TestFileDiskFullAtClose(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	disk := &faultyDisk{}
	seams := defaultFileSeams()
	seams.write = disk.write
	w, err := newFileWriter(FileOptions{Path: path, BufferSize: 4096}, seams)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 10; i < 15; i++ {
		if err := w.WriteFrame(dnstapFrame(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	disk.full = true
	if err := w.Close(); err == nil {
		t.Fatal("Close on a full disk returned nil")
	}
	st := w.Stats()
	if st.FramesLost != 5 || st.Frames != 10 || st.MovedTorn != 1 {
		t.Errorf("stats %+v", st)
	}
	names := listFiles(t, dir)
	if len(names) != 1 || !strings.HasSuffix(names[0], ".torn") {
		t.Fatalf("files %v", names)
	}
	if pf := readFileStrict(t, filepath.Join(dir, names[0]), true); len(pf.frames) != 10 {
		t.Errorf("torn file holds %d frames, want 10", len(pf.frames))
	}
}

// TestFileDiskFullTmpfs fills a real 64 KiB tmpfs. It needs CAP_SYS_ADMIN to
// mount; without it the same path is covered by TestFileDiskFullInjected.
func TestFileDiskFullTmpfs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("cannot mount a tmpfs (%v): needs CAP_SYS_ADMIN; TestFileDiskFullInjected covers the path", err)
		}
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 32<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dns.fstrm")
	clk := newFakeClock()
	seams := defaultFileSeams()
	seams.now = clk.now
	w, err := newFileWriter(FileOptions{Path: path, BufferSize: 4096}, seams)
	if err != nil {
		t.Fatal(err)
	}
	seq, accepted := 0, 0
	var ferr error
	for range 10000 {
		ferr = w.WriteFrame(dnstapFrame(t, seq))
		seq++
		if ferr != nil {
			break
		}
		accepted++
	}
	if !errors.Is(ferr, ErrUnavailable) || !errors.Is(ferr, syscall.ENOSPC) {
		t.Fatalf("filling tmpfs: %v, want ErrUnavailable wrapping ENOSPC", ferr)
	}
	if pf := readFileStrict(t, path, true); uint64(len(pf.frames)) != w.Stats().Frames {
		t.Fatalf("full disk: %d whole frames on disk, Stats %d", len(pf.frames), w.Stats().Frames)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	clk.advance(DefaultRetryInterval)
	for i := range 20 {
		if err := w.WriteFrame(dnstapFrame(t, seq)); err != nil {
			t.Fatalf("frame %d after space returned: %v", i, err)
		}
		seq++
		accepted++
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Recoveries != 1 || st.FramesLost != 0 || st.Frames != uint64(accepted) {
		t.Errorf("stats %+v, accepted %d", st, accepted)
	}
	// Validate a copy outside the tmpfs (the validator needs temp space).
	out := filepath.Join(t.TempDir(), "dns.fstrm")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if c := validateFile(t, out, false); c != accepted {
		t.Errorf("validator %d, accepted %d", c, accepted)
	}
}

func TestFileWriteFrameAllocs(t *testing.T) {
	w, err := NewFileWriter(FileOptions{Path: filepath.Join(t.TempDir(), "a.fstrm")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fr := dnstapFrame(t, 1)
	allocs := testing.AllocsPerRun(2000, func() {
		if err := w.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("WriteFrame allocates %.1f times per frame", allocs)
	}
}

func BenchmarkFileWriteFrame(b *testing.B) {
	w, err := NewFileWriter(FileOptions{Path: filepath.Join(b.TempDir(), "b.fstrm")})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	fr := dnstapFrame(b, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(fr) + 4))
	for b.Loop() {
		if err := w.WriteFrame(fr); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFileReopenWhileFailing: Reopen arrives while the disk is full. The
// current file cannot get STOP and is moved aside as torn, the new file
// cannot even get START (so none is left behind), and when space returns the
// writer creates a fresh file holding the frames it had kept buffered.
func TestFileReopenWhileFailing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "dns.fstrm")
	clk := newFakeClock()
	disk := &faultyDisk{}
	w, err := newFileWriter(FileOptions{Path: path, BufferSize: 1024}, fileSeams{now: clk.now, write: disk.write})
	if err != nil {
		t.Fatal(err)
	}
	seq, accepted := 0, 0
	for range 20 {
		if err := w.WriteFrame(dnstapFrame(t, seq)); err != nil {
			t.Fatal(err)
		}
		seq++
		accepted++
	}
	disk.full = true
	for range 1000 {
		err := w.WriteFrame(dnstapFrame(t, seq))
		seq++
		if err != nil {
			break
		}
		accepted++
	}
	buffered := w.bufFrames
	if !w.Stats().Failing || buffered == 0 {
		t.Fatalf("want failing with frames buffered: %+v, %d buffered", w.Stats(), buffered)
	}
	w.Reopen()
	clk.advance(DefaultRetryInterval)
	if err := w.Flush(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Flush on a full disk: %v", err)
	}
	if w.f != nil {
		t.Fatal("writer kept a file it could not write START to")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file without START was left at Path: %v", err)
	}
	disk.full = false
	clk.advance(DefaultRetryInterval)
	if err := w.Flush(); err != nil {
		t.Fatalf("after space returned: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Reopens != 1 || st.MovedTorn != 1 || st.FramesLost != 0 || st.Frames != uint64(accepted) {
		t.Errorf("stats %+v, accepted %d", st, accepted)
	}
	files := map[string]parsedFile{}
	for _, name := range listFiles(t, dir) {
		files[name] = readFileStrict(t, filepath.Join(dir, name), strings.HasSuffix(name, ".torn"))
	}
	if len(files) != 2 || len(files["dns.fstrm"].frames) != buffered {
		t.Errorf("files %v; want a torn one and dns.fstrm with the %d buffered frames", listFiles(t, dir), buffered)
	}
	total := 0
	for _, pf := range files {
		total += len(pf.frames)
	}
	if total != accepted {
		t.Errorf("%d frames in files, %d accepted", total, accepted)
	}
}
