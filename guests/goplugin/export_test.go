package goplugin

// NoPdeathsig lets tests turn Pdeathsig off to check the plugin's stdin watch alone.
var NoPdeathsig = &noPdeathsig
