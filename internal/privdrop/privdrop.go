// Package privdrop drops root privileges after the privileged work (binding
// port 53, opening /var/log files) is done: supplementary groups cleared,
// then the GID, then the UID, on every thread of the process (Go's
// syscall.Setuid/Setgid apply to all threads since Go 1.16). Moving from
// UID 0 to a non-zero UID also clears the permitted and effective
// capability sets (capabilities(7), "Effect of user ID changes"), so
// nothing privileged survives.
package privdrop

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// ErrNotRoot is returned by Drop when the process is not running as root:
// then there is nothing to drop (run it with CAP_NET_BIND_SERVICE instead).
var ErrNotRoot = errors.New("--user needs tapproxy to start as root (or run it as that user with CAP_NET_BIND_SERVICE)")

// Lookup resolves a user name (or numeric UID) and an optional group name
// (or GID; default: the user's primary group). It reads /etc/passwd and
// /etc/group, so it works in static (CGO_ENABLED=0) builds.
func Lookup(userName, groupName string) (uid, gid int, err error) {
	u, err := user.Lookup(userName)
	if err != nil {
		if _, nerr := strconv.Atoi(userName); nerr == nil {
			u, err = user.LookupId(userName)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("user %q: %w", userName, err)
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			if _, nerr := strconv.Atoi(groupName); nerr == nil {
				g, err = user.LookupGroupId(groupName)
			}
			if err != nil {
				return 0, 0, fmt.Errorf("group %q: %w", groupName, err)
			}
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	if uid == 0 {
		return 0, 0, fmt.Errorf("user %q is root: nothing would be dropped", userName)
	}
	return uid, gid, nil
}

// Drop switches the whole process to userName/groupName and verifies that
// root cannot be regained.
func Drop(userName, groupName string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	uid, gid, err := Lookup(userName, groupName)
	if err != nil {
		return err
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("clearing supplementary groups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	if syscall.Setuid(0) == nil {
		return errors.New("privileges could be regained after the drop")
	}
	if os.Getuid() != uid || os.Geteuid() != uid || os.Getgid() != gid || os.Getegid() != gid {
		return fmt.Errorf("after the drop: uid %d/%d gid %d/%d", os.Getuid(), os.Geteuid(), os.Getgid(), os.Getegid())
	}
	return nil
}
