package worker

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the worker's Prometheus collectors. The counters keep the
// names the original held (reference §5.4), now really incremented.
type Metrics struct {
	JobsReceived       prometheus.Counter
	JobsCompleted      prometheus.Counter
	JobsFailed         prometheus.Counter
	JobsRejected       prometheus.Counter
	JobsAborted        prometheus.Counter
	BridgeExecutions   prometheus.Counter
	BridgeTimeouts     prometheus.Counter
	BridgeErrors       prometheus.Counter
	ParquetFiles       prometheus.Counter
	ParquetRows        prometheus.Counter
	JobTimeMicros      prometheus.Counter
	BridgeTimeMicros   prometheus.Counter
	ParquetTimeMicros  prometheus.Counter
	MessagesReceived   prometheus.Counter
	MessagesSent       prometheus.Counter
	Reconnects         prometheus.Counter
	JobDuration        prometheus.Histogram
	Slots              prometheus.Gauge
	BusySlots          prometheus.Gauge
	Connected          prometheus.Gauge
	PendingConclusions prometheus.Gauge
}

func newMetrics() *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "casparian_worker_" + name, Help: help})
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "casparian_worker_" + name, Help: help})
	}
	return &Metrics{
		JobsReceived:      c("jobs_received_total", "DISPATCH messages received."),
		JobsCompleted:     c("jobs_completed_total", "Jobs that ended SUCCESS."),
		JobsFailed:        c("jobs_failed_total", "Jobs that ended FAILED."),
		JobsRejected:      c("jobs_rejected_total", "DISPATCHes answered REJECTED (no free slot, or draining)."),
		JobsAborted:       c("jobs_aborted_total", "Jobs that ended ABORTED (ABORT received, or drain deadline)."),
		BridgeExecutions:  c("bridge_executions_total", "Plugin runs started (any guest kind)."),
		BridgeTimeouts:    c("bridge_timeouts_total", "Plugin runs that failed with a timeout."),
		BridgeErrors:      c("bridge_errors_total", "Plugin runs that failed (crash, protocol, plugin or schema error)."),
		ParquetFiles:      c("parquet_files_written_total", "Parquet files committed."),
		ParquetRows:       c("parquet_rows_written_total", "Rows committed to Parquet files."),
		JobTimeMicros:     c("job_execution_time_microseconds_total", "Cumulative job run time, in µs."),
		BridgeTimeMicros:  c("bridge_time_microseconds_total", "Cumulative time plugins ran, in µs."),
		ParquetTimeMicros: c("parquet_write_time_microseconds_total", "Cumulative time spent committing outputs, in µs."),
		MessagesReceived:  c("messages_received_total", "Protocol messages received from the sentinel."),
		MessagesSent:      c("messages_sent_total", "Protocol messages sent to the sentinel."),
		Reconnects:        c("reconnects_total", "Connections to the sentinel made after the first."),
		JobDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "casparian_worker_job_duration_seconds",
			Help: "Job run time on the worker.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 18)}),
		Slots:              g("slots", "Concurrent job slots."),
		BusySlots:          g("busy_slots", "Slots running a job."),
		Connected:          g("connected", "1 while connected to a sentinel that answers."),
		PendingConclusions: g("pending_conclusions", "CONCLUDEs not yet acknowledged by the sentinel."),
	}
}

func (m *Metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.JobsReceived, m.JobsCompleted, m.JobsFailed, m.JobsRejected, m.JobsAborted,
		m.BridgeExecutions, m.BridgeTimeouts, m.BridgeErrors, m.ParquetFiles, m.ParquetRows, m.JobTimeMicros,
		m.BridgeTimeMicros, m.ParquetTimeMicros, m.MessagesReceived, m.MessagesSent, m.Reconnects, m.JobDuration,
		m.Slots, m.BusySlots, m.Connected, m.PendingConclusions} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
