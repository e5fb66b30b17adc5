// dev8agent: the platform's Go agent, reduced to what it needs of dev8's management API.
//
// It decodes every answer strictly (DisallowUnknownFields) into the types /openapi.json
// documents, and checks that no documented key is missing either. It restarts a service with
// the token, follows /events with gorilla/websocket, drops its connection (or is cut off with
// 4001) and resumes with since= without a gap or a duplicate, then waits for dev8 to be
// restarted and notices it by bootId.
//
// Progress goes to stdout as JSON lines ({"step": ..., ...}); the test drives dev8 from them.
// Any contract violation ends the program with exit status 1 and a line {"fail": ...}.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// ---------------------------------------------------------------------------- the documents

type Health struct {
	Healthy       bool              `json:"healthy"`
	LastCheck     time.Time         `json:"lastCheck"`
	Services      map[string]string `json:"services"`
	Uptime        string            `json:"uptime"`
	UptimeSeconds float64           `json:"uptimeSeconds"`
	// Required secrets the services wait for before they start ([] when none).
	WaitingForSecrets []WaitingSecret `json:"waitingForSecrets"`
}

type WaitingSecret struct {
	Name       string   `json:"name"`
	Reason     string   `json:"reason"`
	Status     *int     `json:"status"`
	RetryAfter *float64 `json:"retryAfter"`
}

type Liveness struct {
	Status string  `json:"status"`
	BootID string  `json:"bootId"`
	Reason *string `json:"reason"`
}

type Readiness struct {
	Status   string   `json:"status"`
	NotReady []string `json:"notReady"`
}

type ExitDetails struct {
	Signal     *string  `json:"signal"`
	ExitCode   *int     `json:"exitCode"`
	LastOutput []string `json:"lastOutput"`
}

type Exit struct {
	Reason   string      `json:"reason"`
	Abnormal bool        `json:"abnormal"`
	Error    *string     `json:"error"`
	Details  ExitDetails `json:"details"`
	Shutdown *string     `json:"shutdown"`
}

type NodeInfo struct {
	Pid      *int     `json:"pid"`
	User     *string  `json:"user"`
	ExitCode *int     `json:"exitCode"`
	Strategy *string  `json:"strategy"`
	Service  *string  `json:"service"`
	Binds    []string `json:"binds"`
}

type TreeNode struct {
	Name           string         `json:"name"`
	Path           string         `json:"path"`
	Kind           string         `json:"kind"`
	State          string         `json:"state"`
	Restarts       int            `json:"restarts"`
	RestartReasons map[string]int `json:"restartReasons"`
	LastExit       *Exit          `json:"lastExit"`
	Since          time.Time      `json:"since"`
	Info           NodeInfo       `json:"info"`
	Children       []TreeNode     `json:"children"`
}

type Probe struct {
	Type                 string     `json:"type"`
	Ok                   *bool      `json:"ok"`
	Detail               string     `json:"detail"`
	Latency              *float64   `json:"latency"`
	ConsecutiveFailures  int        `json:"consecutiveFailures"`
	ConsecutiveSuccesses int        `json:"consecutiveSuccesses"`
	FailureThreshold     int        `json:"failureThreshold"`
	SuccessThreshold     int        `json:"successThreshold"`
	Checks               int        `json:"checks"`
	LastCheck            *time.Time `json:"lastCheck"`
}

type Probes struct {
	Readiness *Probe `json:"readiness"`
	Liveness  *Probe `json:"liveness"`
}

type Service struct {
	State          string         `json:"state"`
	Ready          bool           `json:"ready"`
	Pid            *int           `json:"pid"`
	Restarts       int            `json:"restarts"`
	RestartReasons map[string]int `json:"restartReasons"`
	LastExit       *Exit          `json:"lastExit"`
	Since          *time.Time     `json:"since"`
	Probes         *Probes        `json:"probes"`
	// Null without a sampler; its figures are null until sampled.
	Resources *ServiceResources `json:"resources"`
}

// A service's figures, summed over its whole process tree.
type ServiceResources struct {
	CpuSeconds       *float64 `json:"cpuSeconds"`
	CpuUsage         *float64 `json:"cpuUsage"`
	MemoryBytes      *int64   `json:"memoryBytes"`
	MemoryLimitBytes *int64   `json:"memoryLimitBytes"`
	CpuLimitCores    *float64 `json:"cpuLimitCores"`
	Threads          *int     `json:"threads"`
	OpenFds          *int     `json:"openFds"`
	Processes        *int     `json:"processes"`
	OomKills         int      `json:"oomKills"`
}

// The container's cgroup figures; null where unknown (limits: or unlimited).
type ContainerResources struct {
	MemoryBytes      *int64   `json:"memoryBytes"`
	MemoryLimitBytes *int64   `json:"memoryLimitBytes"`
	CpuSeconds       *float64 `json:"cpuSeconds"`
	CpuUsage         *float64 `json:"cpuUsage"`
	CpuLimitCores    *float64 `json:"cpuLimitCores"`
	ThrottledPeriods *int64   `json:"throttledPeriods"`
	ThrottledSeconds *float64 `json:"throttledSeconds"`
	OomKills         *int64   `json:"oomKills"`
}

type Resources struct {
	SampledAt *time.Time         `json:"sampledAt"`
	Interval  float64            `json:"interval"`
	Container ContainerResources `json:"container"`
}

type SecretsStats struct {
	Passes                  int        `json:"passes"`
	FailedPasses            int        `json:"failedPasses"`
	FetchFailures           int        `json:"fetchFailures"`
	Rotations               int        `json:"rotations"`
	ConsecutiveFailedPasses int        `json:"consecutiveFailedPasses"`
	LastFetchDuration       float64    `json:"lastFetchDuration"`
	LastInjectionDuration   float64    `json:"lastInjectionDuration"`
	LastSuccess             *time.Time `json:"lastSuccess"`
}

type Secrets struct {
	Provider   string            `json:"provider"`
	Versions   map[string]string `json:"versions"`
	LastFetch  *time.Time        `json:"lastFetch"`
	NextCheck  *time.Time        `json:"nextCheck"`
	LastPassOk *bool             `json:"lastPassOk"`
	Failed     []string          `json:"failed"`
	Missing    []string          `json:"missing"`
	Ready      bool              `json:"ready"`
	WaitingFor []WaitingSecret   `json:"waitingFor"`
	Stats      SecretsStats      `json:"stats"`
}

type Status struct {
	Version       string             `json:"version"`
	Pid           int                `json:"pid"`
	BootID        string             `json:"bootId"`
	EnvironmentID string             `json:"environmentId"`
	UserID        string             `json:"userId"`
	Started       time.Time          `json:"started"`
	Uptime        string             `json:"uptime"`
	UptimeSeconds float64            `json:"uptimeSeconds"`
	LastEvent     int64              `json:"lastEvent"`
	Services      map[string]Service `json:"services"`
	Tree          TreeNode           `json:"tree"`
	Secrets       *Secrets           `json:"secrets"`
	// Required secrets the services wait for before they start ([] when none).
	WaitingForSecrets []WaitingSecret `json:"waitingForSecrets"`
	LogOutput         *LogOutput      `json:"logOutput"`
	Storage           *Storage        `json:"storage"`
	Resources         *Resources      `json:"resources"`
}

// dev8's own stdout: a stalled or closed reader drops lines, never stalls dev8.
type LogOutput struct {
	LinesWritten int     `json:"linesWritten"`
	LinesDropped int     `json:"linesDropped"`
	LinesQueued  int     `json:"linesQueued"`
	FailedWrites int     `json:"failedWrites"`
	LastError    *string `json:"lastError"`
}

// Where /workspace lives and whether file modes hold there (not on SMB).
type Storage struct {
	Path          string  `json:"path"`
	Kind          string  `json:"kind"`
	FsType        string  `json:"fsType"`
	ModesHold     bool    `json:"modesHold"`
	StrictFilesIn *string `json:"strictFilesIn"`
}

type ServiceConnections struct {
	Count        int        `json:"count"`
	Ports        []int      `json:"ports"`
	Peers        []string   `json:"peers"`
	LastActivity *time.Time `json:"lastActivity"`
}

type Connections struct {
	Services         map[string]ServiceConnections `json:"services"`
	WebsocketClients int                           `json:"websocketClients"`
	LastActivity     *time.Time                    `json:"lastActivity"`
}

type LogLine struct {
	Seq    int64  `json:"seq"`
	Stream string `json:"stream"`
	Line   string `json:"line"`
}

type Logs struct {
	Service string    `json:"service"`
	Lines   []LogLine `json:"lines"`
}

type Action struct {
	Service  string `json:"service"`
	State    string `json:"state"`
	Restarts int    `json:"restarts"`
}

type ErrorDetail struct {
	Code      string   `json:"code"`
	Message   string   `json:"message"`
	Parameter *string  `json:"parameter"`
	Known     []string `json:"known"`
	State     *string  `json:"state"`
}

type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

type LaggedClose struct {
	ResumeFrom int64  `json:"resumeFrom"`
	BootID     string `json:"bootId"`
}

type Event struct {
	Seq    int64           `json:"seq"`
	BootID string          `json:"bootId"`
	Time   time.Time       `json:"time"`
	Kind   string          `json:"kind"`
	Source string          `json:"source"`
	Data   json.RawMessage `json:"data"`
}

// The data of each kind of event.

type ChildStarted struct {
	Child    string   `json:"child"`
	Restarts int      `json:"restarts"`
	Info     NodeInfo `json:"info"`
}

type ChildExited struct {
	Child    string      `json:"child"`
	Reason   string      `json:"reason"`
	Abnormal bool        `json:"abnormal"`
	Error    *string     `json:"error"`
	Shutdown *string     `json:"shutdown"`
	Details  ExitDetails `json:"details"`
}

type RestartScheduled struct {
	Child    string  `json:"child"`
	Reason   string  `json:"reason"`
	Delay    float64 `json:"delay"`
	Restarts int     `json:"restarts"`
}

type ChildGaveUp struct {
	Child       string  `json:"child"`
	Restarts    int     `json:"restarts"`
	MaxRestarts int     `json:"maxRestarts"`
	Window      float64 `json:"window"`
}

type ChildStopping struct {
	Child  string `json:"child"`
	Reason string `json:"reason"`
}

type ChildOnly struct { // child_stopped, child_added, child_removed
	Child string `json:"child"`
}

type ChildKilled struct {
	Child           string  `json:"child"`
	ShutdownTimeout float64 `json:"shutdownTimeout"`
}

type SupervisorEscalated struct {
	Reason string  `json:"reason"`
	Child  *string `json:"child"`
}

type ProbeFailed struct {
	Service          string  `json:"service"`
	Probe            string  `json:"probe"`
	Type             string  `json:"type"`
	Detail           string  `json:"detail"`
	Latency          float64 `json:"latency"`
	Failures         int     `json:"failures"`
	FailureThreshold int     `json:"failureThreshold"`
}

type ProbeRecovered struct {
	Service       string  `json:"service"`
	Probe         string  `json:"probe"`
	Detail        string  `json:"detail"`
	Latency       float64 `json:"latency"`
	AfterFailures int     `json:"afterFailures"`
}

type ServiceReadiness struct { // service_ready, service_not_ready
	Service string `json:"service"`
	Detail  string `json:"detail"`
}

type LivenessFailed struct {
	Service  string `json:"service"`
	Detail   string `json:"detail"`
	Failures int    `json:"failures"`
}

type ProbeLatency struct {
	Service   string  `json:"service"`
	Probe     string  `json:"probe"`
	Latency   float64 `json:"latency"`
	Threshold float64 `json:"threshold"`
}

type Alert struct {
	Alert    string            `json:"alert"`
	Severity string            `json:"severity"`
	Service  *string           `json:"service"`
	Summary  string            `json:"summary"`
	Labels   map[string]string `json:"labels"`
}

type WorkspaceIdle struct {
	IdleFor float64 `json:"idleFor"`
	After   float64 `json:"after"`
}

type WorkspaceActive struct {
	By      string  `json:"by"`
	IdleFor float64 `json:"idleFor"`
}

type ConnectionOpened struct {
	Service string `json:"service"`
	Port    int    `json:"port"`
	Peer    string `json:"peer"`
}

type ConnectionClosed struct {
	Service  string  `json:"service"`
	Port     int     `json:"port"`
	Peer     string  `json:"peer"`
	Duration float64 `json:"duration"`
}

type SecretFetched struct {
	Name    string `json:"name"`
	Role    string `json:"role"`
	Version string `json:"version"`
}

type SecretRotated struct {
	Name            string `json:"name"`
	Role            string `json:"role"`
	Version         string `json:"version"`
	PreviousVersion string `json:"previousVersion"`
}

type SecretFetchFailed struct {
	Name       string   `json:"name"`
	Role       string   `json:"role"`
	Reason     string   `json:"reason"`
	Status     *int     `json:"status"`
	RetryAfter *float64 `json:"retryAfter"`
}

type SecretInputRefused struct {
	Role   string `json:"role"`
	Item   string `json:"item"`
	Reason string `json:"reason"`
}

type SecretsInjected struct {
	Paths    []string `json:"paths"`
	Roles    []string `json:"roles"`
	Duration float64  `json:"duration"`
}

type SecretsInjectionFailed struct {
	Paths   []string `json:"paths"`
	Reasons []string `json:"reasons"`
}

type ChaosFaultInjected struct {
	Fault  string  `json:"fault"`
	Target string  `json:"target"`
	Signal *string `json:"signal"`
	Pid    *int    `json:"pid"`
}

type ReloadStarted struct {
	Reload             int      `json:"reload"`
	Includes           []int    `json:"includes"`
	Added              []string `json:"added"`
	Removed            []string `json:"removed"`
	Changed            []string `json:"changed"`
	Unchanged          []string `json:"unchanged"`
	RestartRequiredFor []string `json:"restartRequiredFor"`
}

type ReloadFinished struct {
	Reload   int      `json:"reload"`
	Includes []int    `json:"includes"`
	Outcome  string   `json:"outcome"`
	Added    []string `json:"added"`
	Removed  []string `json:"removed"`
	Changed  []string `json:"changed"`
	Duration float64  `json:"duration"`
}

type ReloadFailed struct {
	Reload   int    `json:"reload"`
	Includes []int  `json:"includes"`
	Reason   string `json:"reason"`
}

type ResourceThreshold struct { // resource_threshold_crossed, resource_threshold_cleared
	Scope     string  `json:"scope"`
	Service   *string `json:"service"`
	Resource  string  `json:"resource"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
}

type ContainerCpuThrottled struct {
	Periods int     `json:"periods"`
	Seconds float64 `json:"seconds"`
}

type OomKilled struct {
	Scope   string  `json:"scope"`
	Service *string `json:"service"`
}

// dataTypes: the documented data of every kind; an event of another kind is a contract break.
var dataTypes = map[string]func() interface{}{
	"child_started":              func() interface{} { return &ChildStarted{} },
	"child_exited":               func() interface{} { return &ChildExited{} },
	"restart_scheduled":          func() interface{} { return &RestartScheduled{} },
	"child_gave_up":              func() interface{} { return &ChildGaveUp{} },
	"child_stopping":             func() interface{} { return &ChildStopping{} },
	"child_stopped":              func() interface{} { return &ChildOnly{} },
	"child_added":                func() interface{} { return &ChildOnly{} },
	"child_removed":              func() interface{} { return &ChildOnly{} },
	"child_killed":               func() interface{} { return &ChildKilled{} },
	"supervisor_escalated":       func() interface{} { return &SupervisorEscalated{} },
	"probe_failed":               func() interface{} { return &ProbeFailed{} },
	"probe_recovered":            func() interface{} { return &ProbeRecovered{} },
	"service_ready":              func() interface{} { return &ServiceReadiness{} },
	"service_not_ready":          func() interface{} { return &ServiceReadiness{} },
	"liveness_failed":            func() interface{} { return &LivenessFailed{} },
	"probe_latency_crossed":      func() interface{} { return &ProbeLatency{} },
	"probe_latency_cleared":      func() interface{} { return &ProbeLatency{} },
	"alert_fired":                func() interface{} { return &Alert{} },
	"alert_resolved":             func() interface{} { return &Alert{} },
	"workspace_idle":             func() interface{} { return &WorkspaceIdle{} },
	"workspace_active":           func() interface{} { return &WorkspaceActive{} },
	"connection_opened":          func() interface{} { return &ConnectionOpened{} },
	"connection_closed":          func() interface{} { return &ConnectionClosed{} },
	"secret_fetched":             func() interface{} { return &SecretFetched{} },
	"secret_rotated":             func() interface{} { return &SecretRotated{} },
	"secret_fetch_failed":        func() interface{} { return &SecretFetchFailed{} },
	"secret_input_refused":       func() interface{} { return &SecretInputRefused{} },
	"secrets_injected":           func() interface{} { return &SecretsInjected{} },
	"secrets_injection_failed":   func() interface{} { return &SecretsInjectionFailed{} },
	"chaos_fault_injected":       func() interface{} { return &ChaosFaultInjected{} },
	"reload_started":             func() interface{} { return &ReloadStarted{} },
	"reload_finished":            func() interface{} { return &ReloadFinished{} },
	"reload_failed":              func() interface{} { return &ReloadFailed{} },
	"resource_threshold_crossed": func() interface{} { return &ResourceThreshold{} },
	"resource_threshold_cleared": func() interface{} { return &ResourceThreshold{} },
	"container_cpu_throttled":    func() interface{} { return &ContainerCpuThrottled{} },
	"oom_killed":                 func() interface{} { return &OomKilled{} },
	"resync":                     func() interface{} { return &Status{} },
}

// ------------------------------------------------------------------------------ strictness

type contractError struct{ msg string }

func (e contractError) Error() string { return e.msg }

func fail(format string, args ...interface{}) {
	panic(contractError{fmt.Sprintf(format, args...)})
}

// decodeStrict decodes raw into out refusing unknown keys, then checks that no documented key
// was missing either: the value re-encoded has exactly the keys of what was received.
func decodeStrict(what string, raw []byte, out interface{}) {
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(out); err != nil {
		fail("%s: %v in %s", what, err, clip(raw))
	}
	if decoder.More() {
		fail("%s: trailing data after the document", what)
	}
	var received, typed interface{}
	if err := json.Unmarshal(raw, &received); err != nil {
		fail("%s: %v", what, err)
	}
	again, err := json.Marshal(out)
	if err != nil {
		fail("%s: %v", what, err)
	}
	if err := json.Unmarshal(again, &typed); err != nil {
		fail("%s: %v", what, err)
	}
	if err := sameKeys(typed, received, what); err != nil {
		fail("%v", err)
	}
}

// sameKeys walks two decoded documents and reports an object whose keys differ (a key the
// server left out instead of sending null). json.RawMessage fields are not descended into.
func sameKeys(want, got interface{}, where string) error {
	switch w := want.(type) {
	case map[string]interface{}:
		g, ok := got.(map[string]interface{})
		if !ok {
			return fmt.Errorf("%s: expected an object", where)
		}
		for key := range w {
			if _, present := g[key]; !present {
				return fmt.Errorf("%s: key %q is missing (it must be present, null if unknown)", where, key)
			}
		}
		for key := range g {
			if _, known := w[key]; !known {
				return fmt.Errorf("%s: unknown key %q", where, key)
			}
			if err := sameKeys(w[key], g[key], where+"."+key); err != nil {
				return err
			}
		}
	case []interface{}:
		g, ok := got.([]interface{})
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%s: array differs", where)
		}
		for i := range w {
			if err := sameKeys(w[i], g[i], fmt.Sprintf("%s[%d]", where, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func clip(raw []byte) string {
	if len(raw) > 400 {
		return string(raw[:400]) + "..."
	}
	return string(raw)
}

func requireUTC(what string, t time.Time) {
	if _, offset := t.Zone(); offset != 0 {
		fail("%s: %s is not UTC", what, t)
	}
}

// ----------------------------------------------------------------------------------- agent

type agent struct {
	base    string
	token   string
	service string
	client  *http.Client
	out     *json.Encoder
}

func (a *agent) report(step string, fields map[string]interface{}) {
	line := map[string]interface{}{"step": step}
	for k, v := range fields {
		line[k] = v
	}
	if err := a.out.Encode(line); err != nil {
		os.Exit(3)
	}
}

func (a *agent) request(method, path string, auth bool) (int, []byte) {
	req, err := http.NewRequest(method, a.base+path, nil)
	if err != nil {
		fail("%s %s: %v", method, path, err)
	}
	if auth && a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		fail("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("%s %s: %v", method, path, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		fail("%s %s: content type %q, not JSON", method, path, ct)
	}
	return resp.StatusCode, body
}

func (a *agent) get(path string, want []int, out interface{}) int {
	status, body := a.request(http.MethodGet, path, true)
	a.expect("GET "+path, status, want, body)
	decodeStrict("GET "+path, body, out)
	return status
}

func (a *agent) expect(what string, status int, want []int, body []byte) {
	for _, w := range want {
		if status == w {
			return
		}
	}
	fail("%s: status %d, expected %v: %s", what, status, want, clip(body))
}

func (a *agent) status() Status {
	var status Status
	a.get("/status", []int{200}, &status)
	requireUTC("status.started", status.Started)
	requireUTC("status.tree.since", status.Tree.Since)
	return status
}

// reads: every documented read, decoded strictly.
func (a *agent) reads() string {
	var health Health
	code := a.get("/health", []int{200, 503}, &health)
	requireUTC("health.lastCheck", health.LastCheck)
	a.report("health", map[string]interface{}{"code": code, "healthy": health.Healthy, "uptimeSeconds": health.UptimeSeconds})

	var live Liveness
	code = a.get("/livez", []int{200, 503}, &live)
	if (code == 200) != (live.Status == "alive") || live.BootID == "" {
		fail("/livez: status %d with %+v", code, live)
	}
	a.report("livez", map[string]interface{}{"code": code, "status": live.Status, "bootId": live.BootID})

	var ready Readiness
	code = a.get("/readyz", []int{200, 503}, &ready)
	if (code == 200) != (ready.Status == "ready") {
		fail("/readyz: status %d with %+v", code, ready)
	}
	a.report("readyz", map[string]interface{}{"code": code, "status": ready.Status, "notReady": ready.NotReady})

	status := a.status()
	service, ok := status.Services[a.service]
	if !ok {
		fail("/status has no service %q", a.service)
	}
	if status.BootID != live.BootID {
		fail("/status bootId %q differs from /livez %q", status.BootID, live.BootID)
	}
	a.report("status", map[string]interface{}{
		"bootId": status.BootID, "lastEvent": status.LastEvent, "state": service.State,
		"secretsNull": status.Secrets == nil, "probesNull": service.Probes == nil,
	})

	var connections Connections
	a.get("/connections", []int{200}, &connections)
	a.report("connections", map[string]interface{}{"websocketClients": connections.WebsocketClients})

	var logs Logs
	a.get("/services/"+a.service+"/logs?lines=20", []int{200}, &logs)
	if logs.Service != a.service {
		fail("logs of %q answered for %q", a.service, logs.Service)
	}
	a.report("logs", map[string]interface{}{"lines": len(logs.Lines)})
	return status.BootID
}

// documentedKinds: the kinds of event /openapi.json documents must be exactly those this agent
// decodes (each with its own data type).
func (a *agent) documentedKinds() {
	status, body := a.request(http.MethodGet, "/openapi.json", true)
	a.expect("GET /openapi.json", status, []int{200}, body)
	var document struct {
		Components struct {
			Schemas map[string]struct {
				OneOf []struct {
					Ref string `json:"$ref"`
				} `json:"oneOf"`
				Properties struct {
					Kind struct {
						Enum []string `json:"enum"`
					} `json:"kind"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(body, &document); err != nil {
		fail("/openapi.json: %v", err)
	}
	schemas := document.Components.Schemas
	documented := map[string]bool{}
	for _, option := range schemas["Event"].OneOf {
		name := option.Ref[strings.LastIndex(option.Ref, "/")+1:]
		for _, kind := range schemas[name].Properties.Kind.Enum {
			documented[kind] = true
		}
	}
	for kind := range dataTypes {
		if !documented[kind] {
			fail("the agent decodes %q, which /openapi.json does not document", kind)
		}
	}
	for kind := range documented {
		if _, known := dataTypes[kind]; !known {
			fail("/openapi.json documents %q, which the agent cannot decode", kind)
		}
	}
	a.report("openapi", map[string]interface{}{"eventKinds": len(documented)})
}

// errors: the error bodies are one documented shape too.
func (a *agent) errors() {
	var missing ErrorBody
	a.get("/services/no-such-service/logs", []int{404}, &missing)
	if missing.Error.Known == nil || missing.Error.Code == "" {
		fail("404 without the known names: %+v", missing)
	}
	var bad ErrorBody
	a.get("/services/"+a.service+"/logs?lines=abc", []int{400}, &bad)
	if bad.Error.Parameter == nil || *bad.Error.Parameter != "lines" {
		fail("400 does not name the parameter: %+v", bad)
	}
	status, body := a.request(http.MethodPost, "/services/"+a.service+"/restart", false)
	var refused ErrorBody
	if a.token != "" {
		a.expect("POST restart without the token", status, []int{401}, body)
		decodeStrict("401", body, &refused)
	}
	a.report("errors", map[string]interface{}{"notFound": missing.Error.Code, "badRequest": bad.Error.Code, "unauthorized": refused.Error.Code})
}

func (a *agent) restart() Action {
	status, body := a.request(http.MethodPost, "/services/"+a.service+"/restart", true)
	a.expect("POST restart", status, []int{200}, body)
	var action Action
	decodeStrict("POST restart", body, &action)
	if action.Service != a.service {
		fail("restarted %q, asked %q", action.Service, a.service)
	}
	a.report("restarted", map[string]interface{}{"state": action.State, "restarts": action.Restarts})
	return action
}

// ---------------------------------------------------------------------------------- events

type follower struct {
	a      *agent
	conn   *websocket.Conn
	raw    net.Conn
	bootID string
	last   int64
	seen   []int64
	byKind map[string]int
	// smallBuffer: a tiny kernel receive buffer, so that not reading backs up to dev8 soon.
	smallBuffer bool
}

func (f *follower) connect(deadline time.Time) (*http.Response, error) {
	u, _ := url.Parse(f.a.base)
	u.Scheme = "ws"
	u.Path = "/events"
	// bootId: the boot the resume point belongs to; from another boot dev8 answers a resync.
	u.RawQuery = url.Values{
		"since":  {fmt.Sprint(f.last)},
		"bootId": {f.bootID},
	}.Encode()
	header := http.Header{}
	if f.a.token != "" {
		header.Set("Authorization", "Bearer "+f.a.token)
	}
	dialer := websocket.Dialer{
		HandshakeTimeout: 5 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil && f.smallBuffer {
				if tcp, ok := conn.(*net.TCPConn); ok {
					tcp.SetReadBuffer(4096)
				}
			}
			f.raw = conn
			return conn, err
		},
	}
	for {
		conn, resp, err := dialer.Dial(u.String(), header)
		if err == nil {
			conn.SetReadLimit(64 << 20)
			f.conn = conn
			return resp, nil
		}
		if resp != nil { // the server answered: a refusal is not worth retrying
			body, _ := io.ReadAll(resp.Body)
			var refused ErrorBody
			decodeStrict("events handshake refusal", body, &refused)
			return resp, fmt.Errorf("refused %d: %s", resp.StatusCode, refused.Error.Code)
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// next: the events of the next message (one event, or a JSON array of them).
func (f *follower) next(timeout time.Duration) ([]Event, error) {
	f.conn.SetReadDeadline(time.Now().Add(timeout))
	kind, message, err := f.conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	if kind != websocket.TextMessage {
		fail("a binary websocket message")
	}
	trimmed := bytes.TrimLeft(message, " \t\r\n")
	var raws []json.RawMessage
	if len(trimmed) > 0 && trimmed[0] == '[' {
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			fail("an event batch that is not a JSON array: %v", err)
		}
	} else {
		raws = []json.RawMessage{trimmed}
	}
	events := make([]Event, 0, len(raws))
	for _, raw := range raws {
		var event Event
		decodeStrict("event", raw, &event)
		requireUTC("event.time", event.Time)
		factory, known := dataTypes[event.Kind]
		if !known {
			fail("event of an undocumented kind %q", event.Kind)
		}
		decodeStrict("data of "+event.Kind, event.Data, factory())
		events = append(events, event)
	}
	return events, nil
}

// take: account for received events; seq must go on by exactly one (no filter is used).
func (f *follower) take(events []Event) {
	for _, event := range events {
		if event.BootID != f.bootID {
			fail("event %d of boot %q while following boot %q", event.Seq, event.BootID, f.bootID)
		}
		if event.Kind == "resync" {
			fail("resync while resuming within one boot from %d", f.last)
		}
		if event.Seq != f.last+1 {
			fail("seq %d after %d: a gap or a duplicate", event.Seq, f.last)
		}
		f.last = event.Seq
		f.seen = append(f.seen, event.Seq)
		f.byKind[event.Kind]++
	}
}

// until: read events until one of kind about child arrives; returns false on a close/drop.
func (f *follower) until(kind, child string, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		events, err := f.next(time.Until(deadline))
		if err != nil {
			return false, err
		}
		f.take(events)
		for _, event := range events {
			var about struct {
				Child string `json:"child"`
			}
			if event.Kind == kind && json.Unmarshal(event.Data, &about) == nil && about.Child == child {
				return true, nil
			}
		}
	}
	return false, errors.New("timed out")
}

// lagClose: the structured reason of a 4001 close, or nil for any other end.
func lagClose(err error) *LaggedClose {
	var closeErr *websocket.CloseError
	if !errors.As(err, &closeErr) || closeErr.Code != 4001 {
		return nil
	}
	var lagged LaggedClose
	decodeStrict("4001 close reason", []byte(closeErr.Text), &lagged)
	return &lagged
}

func (a *agent) follow(bootID string, since int64) *follower {
	f := &follower{a: a, bootID: bootID, last: since, byKind: map[string]int{}}
	if _, err := f.connect(time.Now().Add(10 * time.Second)); err != nil {
		fail("/events: %v", err)
	}
	a.report("following", map[string]interface{}{"since": since})
	return f
}

func (a *agent) resumeAfterDrop(f *follower) {
	// The agent loses its connection (a network blip): no close frame, the socket just goes.
	f.raw.Close()
	f.conn.Close()
	a.report("dropped", map[string]interface{}{"last": f.last})
	// Events happen while it is away.
	a.restart()
	if _, err := f.connect(time.Now().Add(10 * time.Second)); err != nil {
		fail("reconnect: %v", err)
	}
	ok, err := f.until("child_started", a.service, 20*time.Second)
	if !ok {
		fail("after resuming, no child_started of %s: %v", a.service, err)
	}
	a.report("resumed", map[string]interface{}{"last": f.last, "events": len(f.seen)})
}

// lag: on a connection with a tiny receive buffer, stop reading while restarting the service
// over and over (for at most hold), then read: dev8 cuts the subscriber off (4001) once it is
// far enough behind, telling it where to resume.
func (a *agent) lag(f *follower, hold time.Duration) {
	f.conn.Close()
	f.smallBuffer = true
	if _, err := f.connect(time.Now().Add(10 * time.Second)); err != nil {
		fail("reconnect to lag: %v", err)
	}
	f.smallBuffer = false
	a.report("lagging", map[string]interface{}{"last": f.last})
	dropped := a.droppedSubscribers()
	restarts := 0
	for deadline := time.Now().Add(hold); time.Now().Before(deadline); restarts++ {
		status, body := a.request(http.MethodPost, "/services/"+a.service+"/restart", true)
		a.expect("POST restart", status, []int{200}, body)
		if a.droppedSubscribers() > dropped {
			break // dev8 has cut us off: what it sent before the close is still to be read
		}
	}
	a.report("flooded", map[string]interface{}{"restarts": restarts})
	cutOff := false
	for {
		events, err := f.next(10 * time.Second)
		if err != nil {
			if lagged := lagClose(err); lagged != nil {
				cutOff = true
				// Everything queued before the close was delivered: the resume point is the last seen.
				if lagged.BootID != f.bootID || lagged.ResumeFrom != f.last {
					fail("4001 with resumeFrom %d bootId %q; received up to %d", lagged.ResumeFrom, lagged.BootID, f.last)
				}
				a.report("cut_off", map[string]interface{}{"resumeFrom": lagged.ResumeFrom, "last": f.last})
				break
			}
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				break // caught up without being cut off
			}
			fail("events: %v", err)
		}
		f.take(events)
	}
	if !cutOff {
		f.conn.Close()
	}
	if _, err := f.connect(time.Now().Add(10 * time.Second)); err != nil {
		fail("reconnect after lag: %v", err)
	}
	a.restart()
	if ok, err := f.until("child_started", a.service, 20*time.Second); !ok {
		fail("after lag, no child_started: %v", err)
	}
	a.report("caught_up", map[string]interface{}{"last": f.last, "events": len(f.seen), "cutOff": cutOff})
}

// droppedSubscribers: dev8's count of subscribers cut off for lagging (from /metrics).
func (a *agent) droppedSubscribers() float64 {
	req, _ := http.NewRequest(http.MethodGet, a.base+"/metrics", nil)
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		fail("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "dev8_event_subscribers_dropped_total ") {
			var value float64
			fmt.Sscanf(strings.Fields(line)[1], "%g", &value)
			return value
		}
	}
	fail("/metrics has no dev8_event_subscribers_dropped_total")
	return 0
}

// acrossRestart: dev8 is restarted under the agent; it notices by bootId, and re-reads /status.
func (a *agent) acrossRestart(f *follower, timeout time.Duration) {
	a.report("waiting_for_restart", map[string]interface{}{"bootId": f.bootID, "last": f.last})
	deadline := time.Now().Add(timeout)
	for {
		if time.Now().After(deadline) {
			fail("dev8 did not come back within %s", timeout)
		}
		events, err := f.next(time.Until(deadline))
		if err == nil {
			if events[0].BootID == f.bootID {
				f.take(events)
				continue
			}
			a.noticeRestart(f, events)
			return
		}
		// Disconnected: dev8 is going away. Reconnect (with the old resume point) until it is back.
		f.conn.Close()
		if _, err := f.connect(deadline); err != nil {
			fail("reconnect across the restart: %v", err)
		}
	}
}

func (a *agent) noticeRestart(f *follower, events []Event) {
	first := events[0]
	resync := first.Kind == "resync"
	var fresh Status
	if resync {
		decodeStrict("resync data", first.Data, &fresh)
	} else {
		fresh = a.status()
	}
	if fresh.BootID != first.BootID {
		fail("resync/status bootId %q, event bootId %q", fresh.BootID, first.BootID)
	}
	a.report("restart_noticed", map[string]interface{}{
		"oldBootId": f.bootID, "newBootId": first.BootID, "resync": resync, "seq": first.Seq,
	})
	f.bootID = first.BootID
	// From here the new boot's numbering applies.
	f.last = first.Seq
	for _, event := range events[1:] {
		f.take([]Event{event})
	}
}

// ------------------------------------------------------------------------------------ main

func main() {
	base := flag.String("url", "http://127.0.0.1:9000", "dev8's API")
	tokenFile := flag.String("token-file", "", "the API token")
	service := flag.String("service", "web", "the service to restart")
	hold := flag.Duration("lag", 0, "stop reading events this long (0: skip the lag step)")
	restartWait := flag.Duration("restart-timeout", 60*time.Second, "how long to wait for dev8 to be restarted")
	flag.Parse()

	a := &agent{base: strings.TrimRight(*base, "/"), service: *service,
		client: &http.Client{Timeout: 10 * time.Second}, out: json.NewEncoder(os.Stdout)}
	if *tokenFile != "" {
		data, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		a.token = strings.TrimSpace(string(data))
	}

	defer func() {
		if r := recover(); r != nil {
			if c, ok := r.(contractError); ok {
				a.out.Encode(map[string]string{"fail": c.msg})
				os.Exit(1)
			}
			panic(r)
		}
	}()

	bootID := a.reads()
	a.documentedKinds()
	a.errors()
	since := a.status().LastEvent
	f := a.follow(bootID, since)
	a.restart()
	if ok, err := f.until("child_started", a.service, 20*time.Second); !ok {
		fail("no child_started of %s after its restart: %v", a.service, err)
	}
	a.report("events", map[string]interface{}{"last": f.last, "kinds": sortedKinds(f.byKind)})
	a.resumeAfterDrop(f)
	if *hold > 0 {
		a.lag(f, *hold)
	}
	if len(f.seen) == 0 || f.seen[0] != since+1 || f.seen[len(f.seen)-1] != since+int64(len(f.seen)) {
		fail("the events seen are not exactly %d..: %v", since+1, f.seen)
	}
	a.acrossRestart(f, *restartWait)
	a.reads()
	a.report("done", map[string]interface{}{"events": len(f.seen)})
}

func sortedKinds(kinds map[string]int) []string {
	names := make([]string, 0, len(kinds))
	for name := range kinds {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
