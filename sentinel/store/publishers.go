package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// Publisher is a trusted publisher key (cf_publisher).
type Publisher struct {
	ID         int64
	Name       string
	Email      string
	PublicKey  string // hex
	CreatedAt  string
	LastActive string
}

// TrustPublisher adds the Ed25519 public key pubHex to the allow-list
// under name, or renames it; it returns the publisher id.
func (s *Store) TrustPublisher(ctx context.Context, name, email, pubHex string) (int64, error) {
	pubHex = strings.ToLower(strings.TrimSpace(pubHex))
	if name == "" || len(pubHex) != 64 {
		return 0, errors.New("trust publisher: want a name and a 64-hex-digit Ed25519 public key")
	}
	var id int64
	now := fmtTime(s.now())
	err := s.writeTx(ctx, func(tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cf_publisher (name, email, public_key, created_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (public_key) DO UPDATE SET name = excluded.name, email = coalesce(excluded.email, email)`,
			name, nullStr(email), pubHex, now); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT id FROM cf_publisher WHERE public_key = ?`, pubHex).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("trust publisher %s: %w", name, err)
	}
	return id, nil
}

// TrustedPublisher returns the publisher whose key is pubHex; ok is false
// for a key not on the allow-list.
func (s *Store) TrustedPublisher(ctx context.Context, pubHex string) (p Publisher, ok bool, err error) {
	err = s.readRow(ctx, `SELECT id, name, coalesce(email, ''), public_key, coalesce(created_at, ''), coalesce(last_active, '')
		FROM cf_publisher WHERE public_key = ?`, strings.ToLower(pubHex)).
		Scan(&p.ID, &p.Name, &p.Email, &p.PublicKey, &p.CreatedAt, &p.LastActive)
	if errors.Is(err, sql.ErrNoRows) {
		return Publisher{}, false, nil
	}
	if err != nil {
		return Publisher{}, false, fmt.Errorf("publisher key: %w", err)
	}
	return p, true, nil
}

// TouchPublisher records that publisher id just deployed.
func (s *Store) TouchPublisher(ctx context.Context, id int64) error {
	return s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `UPDATE cf_publisher SET last_active = ? WHERE id = ?`, fmtTime(s.now()), id)
		return err
	})
}

// Publishers lists the trusted publisher keys.
func (s *Store) Publishers(ctx context.Context) ([]Publisher, error) {
	rows, err := s.readQuery(ctx, `SELECT id, name, coalesce(email, ''), coalesce(public_key, ''), coalesce(created_at, ''),
		coalesce(last_active, '') FROM cf_publisher WHERE public_key IS NOT NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("publishers: %w", err)
	}
	defer rows.Close()
	var out []Publisher
	for rows.Next() {
		var p Publisher
		if err := rows.Scan(&p.ID, &p.Name, &p.Email, &p.PublicKey, &p.CreatedAt, &p.LastActive); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// EnsureRoute adds the routing rule pattern → tag unless it exists.
func (s *Store) EnsureRoute(ctx context.Context, pattern, tag string) error {
	rules, err := s.RoutingRules(ctx)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.Pattern == pattern && r.Tag == tag {
			return nil
		}
	}
	return s.AddRoutingRule(ctx, pattern, tag, 0)
}
