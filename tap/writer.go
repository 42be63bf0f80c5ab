package tap

// FrameWriter writes Frame Streams data frames to one destination. Implementations (tap/fstrm) handle
// control frames, reconnection and rotation themselves.
type FrameWriter interface {
	WriteFrame(p []byte) error // one data frame; bounded time (deadlines); must not retain p
	Flush() error
	Close() error // graceful: STOP (and FINISH wait for sockets), bounded
}
