package e2e

import (
	"testing"

	"github.com/tapproxy/tapproxy/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
