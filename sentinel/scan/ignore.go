package scan

import (
	"fmt"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
)

// DefaultIgnore is what every scan skips: hidden files and directories
// (".git", ".DS_Store", ...), Python caches, editor and temporary files.
var DefaultIgnore = []string{".*", "__pycache__/", "*.tmp", "*.swp", "*~", "node_modules/"}

// Ignore matches root-relative paths against gitignore-style patterns:
//
//   - a pattern without a slash matches a name at any depth ("*.tmp");
//   - a leading slash, or a slash inside, anchors it at the root
//     ("/build", "logs/*.gz");
//   - a trailing slash matches directories only ("cache/");
//   - "**" matches any number of directories ("**/raw/*.bin");
//   - "!" re-includes what an earlier pattern excluded; the last matching
//     pattern wins. A directory excluded is not walked, so nothing under it
//     can be re-included (as in git).
type Ignore struct{ rules []rule }

type rule struct {
	neg, dirOnly bool
	glob         string
	text         string
}

// NewIgnore compiles patterns; blank lines and lines starting with "#"
// are skipped.
func NewIgnore(patterns ...[]string) (*Ignore, error) {
	ig := &Ignore{}
	for _, ps := range patterns {
		for _, p := range ps {
			p = strings.TrimSpace(p)
			if p == "" || strings.HasPrefix(p, "#") {
				continue
			}
			r := rule{text: p}
			if strings.HasPrefix(p, "!") {
				r.neg, p = true, p[1:]
			}
			if strings.HasSuffix(p, "/") {
				r.dirOnly, p = true, strings.TrimSuffix(p, "/")
			}
			glob, ok := anchor(p)
			if !ok {
				return nil, fmt.Errorf("ignore pattern %q is not a valid pattern", r.text)
			}
			r.glob = glob
			ig.rules = append(ig.rules, r)
		}
	}
	return ig, nil
}

// Match reports whether rel (slash-separated, root-relative) is ignored.
func (ig *Ignore) Match(rel string, isDir bool) bool {
	ignored := false
	for _, r := range ig.rules {
		if r.dirOnly && !isDir {
			continue
		}
		if ok, _ := doublestar.Match(r.glob, rel); ok {
			ignored = !r.neg
		}
	}
	return ignored
}

// Tags returns the tags of the routing rules whose pattern matches rel,
// with the same pattern rules as Ignore (a pattern without a slash matches
// a name at any depth), sorted and without duplicates.
func Tags(rules []TagRule, rel string) []string {
	var out []string
	for _, r := range rules {
		if ok, _ := doublestar.Match(r.glob, rel); ok {
			out = append(out, r.Tag)
		}
	}
	return dedupe(out)
}

// TagRule is a compiled routing rule.
type TagRule struct {
	Tag  string
	glob string
}

// CompileTagRule compiles one routing rule's pattern.
func CompileTagRule(pattern, tag string) (TagRule, error) {
	glob, ok := anchor(strings.TrimSpace(pattern))
	if !ok {
		return TagRule{}, fmt.Errorf("routing pattern %q is not a valid pattern", pattern)
	}
	return TagRule{Tag: tag, glob: glob}, nil
}

// anchor turns a pattern into a root-relative doublestar glob: a leading
// slash anchors it at the root, a pattern without a slash matches a name at
// any depth. ok is false for an empty or invalid pattern.
func anchor(p string) (glob string, ok bool) {
	switch {
	case strings.HasPrefix(p, "/"):
		p = strings.TrimPrefix(p, "/")
	case !strings.Contains(p, "/"):
		p = "**/" + p
	}
	return p, p != "" && doublestar.ValidatePattern(p)
}
