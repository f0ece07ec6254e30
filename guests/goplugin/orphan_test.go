package goplugin_test

const helperHostEnv = "CF_GOPLUGIN_HELPER_HOST"

func helperHost() {}
