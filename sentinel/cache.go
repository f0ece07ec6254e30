package sentinel

import (
	"context"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

// pluginCacheTTL bounds how long a plugin's manifest and sinks are reused
// between dispatches. DEPLOY and RELOAD clear the cache at once; changes made
// by other processes (casparian enqueue --plugin-file, SQL) are seen within
// this time.
const pluginCacheTTL = time.Second

type cachedPlugin struct {
	info *store.PluginInfo
	at   time.Time
}

// pluginInfo returns the plugin's ACTIVE manifest and sinks, from the cache
// when fresh. Errors are not cached.
func (s *Sentinel) pluginInfo(ctx context.Context, plugin string) (*store.PluginInfo, error) {
	if c, ok := s.plugins[plugin]; ok && time.Since(c.at) < pluginCacheTTL {
		return c.info, nil
	}
	info, err := s.st.PluginDispatch(ctx, plugin)
	if err != nil {
		delete(s.plugins, plugin)
		return nil, err
	}
	if s.plugins == nil || len(s.plugins) > 4096 {
		s.plugins = map[string]cachedPlugin{}
	}
	s.plugins[plugin] = cachedPlugin{info: info, at: time.Now()}
	return info, nil
}

// forgetPlugins clears the cache (after DEPLOY or RELOAD).
func (s *Sentinel) forgetPlugins() { s.plugins = nil }
