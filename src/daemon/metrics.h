// Prometheus metrics of vsockd: the text exposition format (version 0.0.4) of a DaemonStatus.
//
// Role: `--metrics-listen unix:PATH|ADDR:PORT` serves GET /metrics with RenderMetrics() of a
// fresh Daemon::Snapshot(); HandleMetricsHttp() is that HTTP exchange (HTTP/1.0 style: one
// request, one answer, close). Names follow Prometheus conventions: `vsockd_` prefix, base
// units, `_total` for counters, a `cid` label per VM.
// Callers: daemon/daemon.cc. Threading: plain functions.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "daemon/status.h"

namespace vsockd::daemon {

std::string RenderMetrics(const DaemonStatus& status);

// Answers one HTTP request head (`request` without its final blank line): GET or HEAD of
// /metrics gets 200 with `render()`; anything else 404 or 405.
std::string HandleMetricsHttp(std::string_view request, const std::function<std::string()>& render);

}  // namespace vsockd::daemon
