package sentinel

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/casparianflow/casparian/sentinel/store"
	"github.com/casparianflow/casparian/sentinel/transport"
)

// Metrics are the sentinel's Prometheus collectors. The 13 counters keep the
// names the original printed (reference §5.4); the rest are new. All are
// really incremented; docs/OPERATIONS.md lists them.
type Metrics struct {
	JobsDispatched     prometheus.Counter
	JobsCompleted      prometheus.Counter
	JobsFailed         prometheus.Counter
	JobsRejected       prometheus.Counter
	JobsRequeued       prometheus.Counter
	WorkersRegistered  prometheus.Counter
	WorkersCleanedUp   prometheus.Counter
	MessagesReceived   prometheus.Counter
	MessagesSent       prometheus.Counter
	ProtocolErrors     prometheus.Counter
	DBErrors           prometheus.Counter
	DispatchTimeMicros prometheus.Counter
	ConcludeTimeMicros prometheus.Counter

	JobsAborted        prometheus.Counter
	StaleConclusions   prometheus.Counter
	LeasesExpired      prometheus.Counter
	SendQueueOverflows prometheus.Counter
	Deploys            *prometheus.CounterVec // result=ok|error
	DispatchLatency    prometheus.Histogram   // claim start → DISPATCH queued for the worker
	JobDuration        prometheus.Histogram   // DISPATCH → CONCLUDE, as seen by the sentinel
	Workers            prometheus.Gauge
	Slots              prometheus.Gauge
	BusySlots          prometheus.Gauge
	CrashLooping       prometheus.Gauge
}

func newMetrics() *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "casparian_" + name, Help: help})
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "casparian_" + name, Help: help})
	}
	return &Metrics{
		JobsDispatched:     c("jobs_dispatched_total", "DISPATCH messages sent to workers."),
		JobsCompleted:      c("jobs_completed_total", "Jobs concluded SUCCESS (now COMPLETED)."),
		JobsFailed:         c("jobs_failed_total", "Jobs that ended FAILED (plugin failure, abort, unresolvable, retries exhausted)."),
		JobsRejected:       c("jobs_rejected_total", "CONCLUDE REJECTED receipts (worker at capacity or draining)."),
		JobsRequeued:       c("jobs_requeued_total", "Jobs put back to QUEUED (rejected, lease expired, worker evicted, drained)."),
		WorkersRegistered:  c("workers_registered_total", "IDENTIFY messages that registered a worker."),
		WorkersCleanedUp:   c("workers_cleaned_up_total", "Workers evicted for silence or a full send queue."),
		MessagesReceived:   c("messages_received_total", "Protocol messages received (valid or not)."),
		MessagesSent:       c("messages_sent_total", "Protocol messages handed to the socket."),
		ProtocolErrors:     c("protocol_errors_total", "Messages that failed to decode or made no sense."),
		DBErrors:           c("db_errors_total", "SQLite operations that failed."),
		DispatchTimeMicros: c("dispatch_time_microseconds_total", "Cumulative time spent claiming and building DISPATCHes, in µs."),
		ConcludeTimeMicros: c("conclude_time_microseconds_total", "Cumulative time spent recording CONCLUDEs, in µs."),

		JobsAborted:        c("jobs_aborted_total", "CONCLUDE ABORTED receipts."),
		StaleConclusions:   c("stale_conclusions_total", "CONCLUDEs rejected by the attempt fencing check (late or duplicate)."),
		LeasesExpired:      c("leases_expired_total", "RUNNING jobs whose lease expired and were reaped."),
		SendQueueOverflows: c("send_queue_overflows_total", "Workers dropped because their send queue was full."),
		Deploys: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "casparian_deploys_total",
			Help: "DEPLOY requests, by result."}, []string{"result"}),
		DispatchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "casparian_dispatch_latency_seconds",
			Help:    "Time from starting a claim to the DISPATCH being queued for the worker.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16)}),
		JobDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "casparian_job_duration_seconds",
			Help:    "Time from DISPATCH to CONCLUDE, as seen by the sentinel.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 18)}),
		Workers:   g("sentinel_workers", "Registered workers."),
		Slots:     g("sentinel_worker_slots", "Job slots of the registered workers."),
		BusySlots: g("sentinel_busy_slots", "Slots of registered workers running a dispatched job."),
		CrashLooping: g("sentinel_plugins_crash_looping",
			"Plugins whose last attempts all crashed, hung or hit a resource limit: their jobs run one at a time."),
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.JobsDispatched, m.JobsCompleted, m.JobsFailed, m.JobsRejected, m.JobsRequeued,
		m.WorkersRegistered, m.WorkersCleanedUp, m.MessagesReceived, m.MessagesSent, m.ProtocolErrors, m.DBErrors,
		m.DispatchTimeMicros, m.ConcludeTimeMicros, m.JobsAborted, m.StaleConclusions, m.LeasesExpired,
		m.SendQueueOverflows, m.Deploys, m.DispatchLatency, m.JobDuration, m.Workers, m.Slots, m.BusySlots, m.CrashLooping}
}

// queueCollector reports casparian_queue_jobs{status} from SQLite at scrape
// time, so the gauge is exact even for jobs other processes enqueue.
type queueCollector struct {
	st   *store.Store
	desc *prometheus.Desc
	errs prometheus.Counter
}

func (q *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- q.desc }

func (q *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := q.st.Counts(ctx)
	if err != nil {
		q.errs.Inc()
		ch <- prometheus.NewInvalidMetric(q.desc, err)
		return
	}
	for _, s := range store.Statuses {
		ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, float64(counts[s]), s)
	}
}

// transportCollector exports the hardened transport's drop counters.
type transportCollector struct{ desc *prometheus.Desc }

func (t transportCollector) Describe(ch chan<- *prometheus.Desc) { ch <- t.desc }

func (t transportCollector) Collect(ch chan<- prometheus.Metric) {
	for k, v := range transportStats(transport.CurrentStats()) {
		ch <- prometheus.MustNewConstMetric(t.desc, prometheus.CounterValue, float64(v), k)
	}
}

// register adds every sentinel collector to r.
func (m *Metrics) register(r prometheus.Registerer, st *store.Store) error {
	cs := append(m.collectors(),
		&queueCollector{st: st, errs: m.DBErrors, desc: prometheus.NewDesc("casparian_queue_jobs",
			"Jobs in the queue, by status.", []string{"status"}, nil)},
		transportCollector{desc: prometheus.NewDesc("casparian_transport_dropped_connections_total",
			"ZeroMQ connections the hardened transport closed, by reason.", []string{"reason"}, nil)})
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func transportStats(st transport.Stats) map[string]uint64 {
	return map[string]uint64{
		"handshake_timeout":   st.HandshakeTimeouts,
		"handshake_failure":   st.HandshakeFailures,
		"oversized_frame":     st.OversizedFrames,
		"oversized_message":   st.OversizedMessages,
		"too_many_handshakes": st.RejectedPending,
		"send_buffer_full":    st.SendOverflows,
		"write_timeout":       st.WriteTimeouts,
		"auth_failure":        st.AuthFailures,
	}
}
