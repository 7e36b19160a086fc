package activities_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/testsuite"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// lateStore answers FindLate from a script: one answer a call, the last one repeated.
type lateStore struct {
	activities.Store
	mu      sync.Mutex
	answers []ota.LateTargets
	cursors []ota.ChangeCursor // the cursor of each call
}

func (s *lateStore) FindLate(_ context.Context, q store.LateSearch) (ota.LateTargets, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cursors = append(s.cursors, q.Cursor)
	a := s.answers[min(len(s.cursors), len(s.answers))-1]
	return a, nil
}

func TestFindLateTargets(t *testing.T) {
	at := func(xid string) ota.ChangeCursor { return ota.ChangeCursor{XID: xid} }
	tests := []struct {
		name    string
		answers []ota.LateTargets
		wantIDs []string
		// wantCalls is the number of looks; wantCursors the cursors they were given.
		wantCursors []ota.ChangeCursor
		wantWait    bool // returns only after MaxWait
	}{
		{"found at once", []ota.LateTargets{{IDs: []string{"d1"}, Cursor: at("5")}}, []string{"d1"},
			[]ota.ChangeCursor{at("1")}, false},
		{"found on the third look", []ota.LateTargets{{Cursor: at("2")}, {Cursor: at("3")}, {IDs: []string{"d2", "d3"}, Cursor: at("4")}},
			[]string{"d2", "d3"}, []ota.ChangeCursor{at("1"), at("2"), at("3")}, false},
		{"nothing within the wait", []ota.LateTargets{{Cursor: at("2")}}, nil, nil, true},
		// A look that stopped at its scan limit is followed by the next at once.
		{"a long backlog", []ota.LateTargets{{Cursor: ota.ChangeCursor{XID: "9", ID: "x"}}, {IDs: []string{"d4"}, Cursor: at("10")}},
			[]string{"d4"}, []ota.ChangeCursor{at("1"), {XID: "9", ID: "x"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &lateStore{answers: tt.answers}
			var s testsuite.WorkflowTestSuite
			env := s.NewTestActivityEnvironment()
			poll := 20 * time.Millisecond
			if tt.name == "a long backlog" {
				poll = time.Hour // a look that waited for it would find nothing within the wait
			}
			env.RegisterActivity(&activities.Activities{Store: st, LatePoll: poll})
			var a *activities.Activities
			maxWait := 300 * time.Millisecond
			start := time.Now()
			v, err := env.ExecuteActivity(a.FindLateTargets, ota.FindLateInput{Rollout: "r", Cursor: at("1"), Limit: 10, MaxWait: ota.Duration(maxWait)})
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			var got ota.LateTargets
			if err := v.Get(&got); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.IDs, tt.wantIDs) {
				t.Errorf("IDs %v, want %v", got.IDs, tt.wantIDs)
			}
			if tt.wantCursors != nil && !slices.Equal(st.cursors, tt.wantCursors) {
				t.Errorf("looked with cursors %v, want %v", st.cursors, tt.wantCursors)
			}
			if tt.wantWait && (took < maxWait || len(st.cursors) < 3) {
				t.Errorf("returned after %s and %d looks; want it to keep looking for %s", took, len(st.cursors), maxWait)
			}
		})
	}
}
