// Command gochecker opens an eStargz blob with the reference library
// (github.com/containerd/stargz-snapshotter/estargz), verifies its TOC against a
// digest, reads every regular file chunk by chunk through the chunk verifiers,
// and prints a JSON report. Any failure exits non-zero.
//
// Usage: gochecker <blob-file> <sha256:toc-digest>
//
//	gochecker build <tar-file> <out-blob> [prioritized-file...]
//
// The build form converts a tar with the reference estargz.Build (gzip level 9)
// and prints {"toc_digest": ..., "diff_id": ...}, so that blobs written by the
// reference can be fed to lazybuild's reader.
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

type entryReport struct {
	Type     string            `json:"type"`
	Mode     int64             `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Uname    string            `json:"userName"`
	Gname    string            `json:"groupName"`
	Size     int64             `json:"size"`
	ModTime  int64             `json:"modtime"`
	LinkName string            `json:"linkName"`
	DevMajor int               `json:"devMajor"`
	DevMinor int               `json:"devMinor"`
	Xattrs   map[string]string `json:"xattrs"` // base64 values
	NumLink  int               `json:"nlink"`
}

type report struct {
	TOCDigest string                 `json:"toc_digest"`
	Entries   int                    `json:"entries"`
	Files     int                    `json:"files"`
	Chunks    int                    `json:"chunks"`
	FileSHA   map[string]string      `json:"file_sha256"`
	Meta      map[string]entryReport `json:"meta"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gochecker: "+format+"\n", args...)
	os.Exit(1)
}

// readVerified reads the whole file named p chunk by chunk, checking each chunk
// against the verifier for its TOC entry, and returns the sha256 of the content.
func readVerified(r *estargz.Reader, v estargz.TOCEntryVerifier, p string, e *estargz.TOCEntry) (string, int) {
	sr, err := r.OpenFile(p)
	if err != nil {
		fail("open %q: %v", p, err)
	}
	whole := sha256.New()
	chunks := 0
	for off := int64(0); off < e.Size; {
		ce, ok := r.ChunkEntryForOffset(p, off)
		if !ok {
			fail("%q: no chunk for offset %d", p, off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 {
			fail("%q: chunk at %d has offset %d size %d", p, off, ce.ChunkOffset, ce.ChunkSize)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			fail("%q: verifier for chunk at %d: %v", p, off, err)
		}
		// One ReadAt per chunk: the library re-inflates from the chunk start on
		// every ReadAt, so small reads would make this quadratic.
		buf := make([]byte, ce.ChunkSize)
		if n, err := sr.ReadAt(buf, ce.ChunkOffset); err != nil && !(err == io.EOF && int64(n) == ce.ChunkSize) {
			fail("%q: read chunk at %d: %d bytes, %v", p, off, n, err)
		}
		cv.Write(buf)
		whole.Write(buf)
		if !cv.Verified() {
			fail("%q: chunk at %d does not match its chunkDigest", p, off)
		}
		off += ce.ChunkSize
		chunks++
	}
	sum := hex.EncodeToString(whole.Sum(nil))
	if e.Digest != "" && e.Digest != "sha256:"+sum {
		fail("%q: content sha256:%s does not match TOC digest %s", p, sum, e.Digest)
	}
	return sum, chunks
}

func build(tarPath, outPath string, prioritized []string) {
	f, err := os.Open(tarPath)
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fail("%v", err)
	}
	opts := []estargz.Option{estargz.WithCompressionLevel(9)}
	if len(prioritized) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritized))
	}
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		fail("estargz.Build: %v", err)
	}
	defer blob.Close()
	out, err := os.Create(outPath)
	if err != nil {
		fail("%v", err)
	}
	if _, err := io.Copy(out, blob); err != nil {
		fail("writing blob: %v", err)
	}
	if err := out.Close(); err != nil {
		fail("%v", err)
	}
	res, _ := json.Marshal(map[string]string{
		"toc_digest": blob.TOCDigest().String(),
		"diff_id":    blob.DiffID().String(),
	})
	fmt.Println(string(res))
}

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "build" {
		build(os.Args[2], os.Args[3], os.Args[4:])
		return
	}
	if len(os.Args) != 3 {
		fail("usage: gochecker <blob> <toc-digest>")
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fail("%v", err)
	}
	r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		fail("estargz.Open: %v", err)
	}
	want, err := digest.Parse(os.Args[2])
	if err != nil {
		fail("bad digest %q: %v", os.Args[2], err)
	}
	v, err := r.VerifyTOC(want)
	if err != nil {
		fail("VerifyTOC: %v", err)
	}
	root, ok := r.Lookup("")
	if !ok {
		fail("no root directory")
	}
	rep := report{TOCDigest: r.TOCDigest().String(), FileSHA: map[string]string{}, Meta: map[string]entryReport{}}
	var walk func(dir string, e *estargz.TOCEntry)
	walk = func(dir string, e *estargz.TOCEntry) {
		var names []string
		children := map[string]*estargz.TOCEntry{}
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			names = append(names, base)
			children[base] = c
			return true
		})
		sort.Strings(names)
		for _, base := range names {
			c := children[base]
			p := path.Join(dir, base)
			rep.Entries++
			xattrs := map[string]string{}
			for k, val := range c.Xattrs {
				xattrs[k] = base64.StdEncoding.EncodeToString(val)
			}
			mt := int64(0)
			if !c.ModTime().IsZero() {
				mt = c.ModTime().Unix()
			}
			rep.Meta[p] = entryReport{c.Type, c.Mode, c.UID, c.GID, c.Uname, c.Gname, c.Size, mt,
				c.LinkName, c.DevMajor, c.DevMinor, xattrs, c.NumLink}
			switch c.Type {
			case "dir":
				walk(p, c)
			case "reg":
				rep.Files++
				// Hardlinks share their target's entry; chunks are keyed by its name.
				sum, n := readVerified(r, v, c.Name, c)
				rep.FileSHA[p] = sum
				rep.Chunks += n
			}
		}
	}
	walk("", root)
	out, err := json.Marshal(rep)
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(string(out))
}
