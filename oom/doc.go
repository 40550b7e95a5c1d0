// Package oom watches containers' memory cgroups for OOM kills: inotify on
// cgroup v2 memory.events and cgroup.events, an eventfd on cgroup v1
// memory.oom_control. Its events go through the shim's one event sequencer,
// ahead of the exit they explain.
package oom
