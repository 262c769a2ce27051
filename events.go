package acmetls

import (
	"errors"
	"fmt"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// EventKind says what happened to a certificate.
type EventKind string

// The kinds of [Event].
const (
	// EventObtained: a certificate was obtained for a name that had none.
	EventObtained EventKind = "obtained"
	// EventObtainFailed: obtaining a first certificate failed; Attempt
	// and NextAttempt tell the backoff.
	EventObtainFailed EventKind = "obtain_failed"
	// EventRenewed: a certificate was replaced by a renewed one.
	EventRenewed EventKind = "renewed"
	// EventRenewFailed: a renewal failed; the current certificate is
	// still served. Attempt and NextAttempt tell the backoff.
	EventRenewFailed EventKind = "renew_failed"
	// EventRevoked: the certificate's OCSP responder says it is revoked;
	// it is replaced at once, and served, without a staple, until the
	// replacement is in.
	EventRevoked EventKind = "revoked"
	// EventAccountReplaced: the CA no longer knew the ACME account (its
	// database was reset, or the account was deactivated), so a new one
	// was registered and the order of ServerName placed again. Err is
	// the CA's answer about the old account.
	EventAccountReplaced EventKind = "account_replaced"
)

// Event reports what happened to one certificate, to [Manager.OnEvent].
// Every failure is an Event, besides an Error log line.
type Event struct {
	Kind       EventKind
	ServerName string
	KeyType    KeyType
	// NotAfter is the expiry of the certificate obtained or renewed, or
	// of the one still served after a failed renewal.
	NotAfter time.Time
	// Attempt counts the failures in a row, the one reported included;
	// NextAttempt is when the next attempt may start. Attempt is zero
	// for a configuration error (terms not agreed, the CA's certificate
	// not trusted), which is not counted against the name: every name
	// fails alike until the configuration is fixed, and a restart with
	// it fixed tries at once.
	Attempt     int
	NextAttempt time.Time
	// Err is the failure. It wraps the CA's problem document
	// (acme.Problem) when the CA sent one.
	Err error
}

// String describes e in one line, for logs and alerts.
func (e Event) String() string {
	s := string(e.Kind) + " " + e.ServerName
	if e.KeyType != "" {
		s += " (" + string(e.KeyType) + ")"
	}
	switch {
	case e.Err == nil:
	case e.NextAttempt.IsZero():
		s += fmt.Sprintf(": %v", e.Err)
	case e.Attempt == 0:
		s += fmt.Sprintf(": not counted against the name, next at %s: %v", e.NextAttempt.Format(time.RFC3339), e.Err)
	default:
		s += fmt.Sprintf(": attempt %d, next at %s: %v", e.Attempt, e.NextAttempt.Format(time.RFC3339), e.Err)
	}
	return s
}

// emit delivers e to OnEvent and logs it: Info for successes, Warn for a
// replaced account, Error for failures, with the CA's problem type and
// detail when there is one.
func (m *Manager) emit(e Event) {
	log := m.logger().Named("renew")
	fields := []zap.Field{zap.String("server_name", e.ServerName)}
	if e.KeyType != "" {
		fields = append(fields, zap.String("key_type", string(e.KeyType)))
	}
	if !e.NotAfter.IsZero() {
		fields = append(fields, zap.Time("not_after", e.NotAfter))
	}
	if e.Err != nil {
		if e.Kind != EventAccountReplaced {
			fields = append(fields, zap.Int("attempt", e.Attempt), zap.Time("next_attempt", e.NextAttempt))
		}
		fields = append(fields, zap.Error(e.Err))
		var p acme.Problem
		if errors.As(e.Err, &p) {
			fields = append(fields, zap.String("problem_type", p.Type), zap.String("problem_detail", p.Detail))
		}
	}
	switch {
	case e.Kind == EventAccountReplaced:
		log.Warn(string(e.Kind), fields...)
	case e.Err != nil:
		log.Error(string(e.Kind), fields...)
	default:
		log.Info(string(e.Kind), fields...)
	}
	if m.OnEvent != nil {
		m.OnEvent(e)
	}
}
