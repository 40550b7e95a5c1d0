package oom

import "unsafe"

// unsafePointer turns a byte of an inotify read buffer into a pointer to
// the event header that starts there.
func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
