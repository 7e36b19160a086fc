package broker

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// Session store tuning.
const (
	// storeQueue is how many session changes wait for the writer; a full queue makes the
	// broker wait for the disk (back-pressure) rather than drop a change.
	storeQueue = 1 << 16
	// storeBatch is the most changes written in one transaction.
	storeBatch = 4096
)

// storeBucket is the bbolt bucket that holds the sessions.
var storeBucket = []byte("sessions")

// sessionStore is a mochi hook that keeps the broker's persistent sessions (clients, their
// subscriptions and the QoS 1/2 messages held for them) in a bbolt file, so that a broker
// started on the file of one that stopped carries on with them.
//
// Changes are written behind: mochi's hooks queue them and one goroutine applies whatever is
// queued in a single transaction, where a message held and acknowledged in the same batch
// costs nothing. The broker relays messages about as fast as without a store (a transaction
// per message, as mochi's own bolt hook does, is five times slower), and Stop writes what is
// queued before closing the file. A broker process that is killed loses the changes of its
// last few milliseconds; writes are not synced, so a machine crash may lose more. (mochi's
// own bolt hook also loses the packet IDs of held messages, which is why this hook exists.)
type sessionStore struct {
	mqtt.HookBase

	db  *bbolt.DB
	log *slog.Logger

	ops  chan storeOp
	done chan struct{}
	// mu guards closed: changes reported after Stop (a hook called as the broker closes)
	// are dropped instead of sent on the closed channel.
	mu     sync.RWMutex
	closed bool
}

// storeOp sets key to val, or deletes it when val is nil; with prefix set it deletes every
// key starting with key.
type storeOp struct {
	key    string
	val    []byte
	prefix bool
}

// openSessionStore opens (or creates) the store file at path and starts its writer.
func openSessionStore(path string, log *slog.Logger) (*sessionStore, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, NoSync: true, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("open session store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(storeBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open session store %s: %w", path, err)
	}
	h := &sessionStore{db: db, log: log, ops: make(chan storeOp, storeQueue), done: make(chan struct{})}
	go h.write()
	return h, nil
}

// ID names the hook in mochi's logs.
func (h *sessionStore) ID() string { return "otaflow-session-store" }

// Provides lists the hook methods the store implements.
func (h *sessionStore) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnClientExpired,
		mqtt.StoredClients, mqtt.StoredSubscriptions, mqtt.StoredInflightMessages,
	}, []byte{b})
}

// Stop writes the queued changes and closes the file. mochi calls it when the broker closes.
func (h *sessionStore) Stop() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	close(h.ops)
	h.mu.Unlock()
	<-h.done
	if err := h.db.Close(); err != nil {
		return fmt.Errorf("close session store: %w", err)
	}
	return nil
}

// queue hands a change to the writer, waiting while the queue is full.
func (h *sessionStore) queue(op storeOp) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return
	}
	h.ops <- op
}

// Keys: "<kind>_<client>[:<filter or packet ID>]", as mochi's storage hooks name them.
func clientKey(id string) string { return storage.ClientKey + "_" + id }
func subscriptionKey(id, filter string) string {
	return storage.SubscriptionKey + "_" + id + ":" + filter
}
func inflightKey(id string, packetID uint16) string {
	return storage.InflightKey + "_" + id + ":" + strconv.FormatUint(uint64(packetID), 10)
}

func (h *sessionStore) put(key string, v interface{ MarshalBinary() ([]byte, error) }) {
	data, err := v.MarshalBinary()
	if err != nil {
		h.log.Error("session store: encode", "key", key, "error", err)
		return
	}
	h.queue(storeOp{key: key, val: data})
}

func (h *sessionStore) del(key string)       { h.queue(storeOp{key: key}) }
func (h *sessionStore) delPrefix(key string) { h.queue(storeOp{key: key, prefix: true}) }

// OnSessionEstablished stores the client of a new or resumed session.
func (h *sessionStore) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	props := cl.Properties.Props.Copy(false)
	h.put(clientKey(cl.ID), &storage.Client{
		ID: cl.ID, T: storage.ClientKey, Remote: cl.Net.Remote, Listener: cl.Net.Listener,
		Username: cl.Properties.Username, Clean: cl.Properties.Clean, ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval: props.SessionExpiryInterval, SessionExpiryIntervalFlag: props.SessionExpiryIntervalFlag,
			AuthenticationMethod: props.AuthenticationMethod, AuthenticationData: props.AuthenticationData,
			RequestProblemInfo: props.RequestProblemInfo, RequestProblemInfoFlag: props.RequestProblemInfoFlag,
			RequestResponseInfo: props.RequestResponseInfo, ReceiveMaximum: props.ReceiveMaximum,
			TopicAliasMaximum: props.TopicAliasMaximum, User: props.User, MaximumPacketSize: props.MaximumPacketSize,
		},
	})
}

// OnDisconnect forgets the session of a client whose session ends with its connection.
func (h *sessionStore) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		h.forget(cl.ID)
	}
}

// OnClientExpired forgets an expired session.
func (h *sessionStore) OnClientExpired(cl *mqtt.Client) { h.forget(cl.ID) }

func (h *sessionStore) forget(id string) {
	h.del(clientKey(id))
	h.delPrefix(subscriptionKey(id, ""))
	h.delPrefix(storage.InflightKey + "_" + id + ":")
}

// OnSubscribed stores the granted subscriptions.
func (h *sessionStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] > 2 {
			continue // refused
		}
		h.put(subscriptionKey(cl.ID, f.Filter), &storage.Subscription{
			ID: subscriptionKey(cl.ID, f.Filter), T: storage.SubscriptionKey, Client: cl.ID, Qos: codes[i],
			Filter: f.Filter, Identifier: f.Identifier, NoLocal: f.NoLocal,
			RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		})
	}
}

// OnUnsubscribed removes the subscriptions.
func (h *sessionStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	for _, f := range pk.Filters {
		h.del(subscriptionKey(cl.ID, f.Filter))
	}
}

// OnQosPublish stores a message held for a client.
func (h *sessionStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	props := pk.Properties.Copy(false)
	key := inflightKey(cl.ID, pk.PacketID)
	h.put(key, &storage.Message{
		ID: key, T: storage.InflightKey, Client: cl.ID, Origin: pk.Origin, PacketID: pk.PacketID,
		FixedHeader: pk.FixedHeader, TopicName: pk.TopicName, Payload: pk.Payload, Sent: sent, Created: pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat: props.PayloadFormat, PayloadFormatFlag: props.PayloadFormatFlag,
			MessageExpiryInterval: props.MessageExpiryInterval, ContentType: props.ContentType,
			ResponseTopic: props.ResponseTopic, CorrelationData: props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier, TopicAlias: props.TopicAlias, User: props.User,
		},
	})
}

// OnQosComplete removes an acknowledged message.
func (h *sessionStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.del(inflightKey(cl.ID, pk.PacketID))
}

// OnQosDropped removes a message mochi dropped.
func (h *sessionStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { h.OnQosComplete(cl, pk) }

// StoredClients returns the stored clients.
func (h *sessionStore) StoredClients() ([]storage.Client, error) {
	return load[storage.Client](h, storage.ClientKey+"_")
}

// StoredSubscriptions returns the stored subscriptions.
func (h *sessionStore) StoredSubscriptions() ([]storage.Subscription, error) {
	return load[storage.Subscription](h, storage.SubscriptionKey+"_")
}

// StoredInflightMessages returns the stored held messages.
func (h *sessionStore) StoredInflightMessages() ([]storage.Message, error) {
	return load[storage.Message](h, storage.InflightKey+"_")
}

// load decodes every value under prefix; an undecodable one is logged and skipped.
func load[T any, PT interface {
	*T
	UnmarshalBinary([]byte) error
}](h *sessionStore, prefix string) ([]T, error) {
	var out []T
	err := h.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(storeBucket).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			var x T
			if err := PT(&x).UnmarshalBinary(v); err != nil {
				h.log.Warn("session store: undecodable entry skipped", "key", string(k), "error", err)
				continue
			}
			out = append(out, x)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read session store: %w", err)
	}
	return out, nil
}

// write applies queued changes, a batch per transaction, until Stop.
func (h *sessionStore) write() {
	defer close(h.done)
	batch := make([]storeOp, 0, storeBatch)
	for op := range h.ops {
		batch = append(batch[:0], op)
	fill:
		for len(batch) < storeBatch {
			select {
			case op, ok := <-h.ops:
				if !ok {
					break fill
				}
				batch = append(batch, op)
			default:
				break fill
			}
		}
		if err := h.apply(batch); err != nil {
			h.log.Error("session store: write failed; sessions may not survive a restart", "changes", len(batch), "error", err)
		}
	}
}

// apply writes a batch in one transaction. Only the last change of each key is applied.
func (h *sessionStore) apply(batch []storeOp) error {
	last := make(map[string]int, len(batch))
	for i, op := range batch {
		if !op.prefix {
			last[op.key] = i
		}
	}
	return h.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(storeBucket)
		for i, op := range batch {
			switch {
			case op.prefix:
				c := b.Cursor()
				for k, _ := c.Seek([]byte(op.key)); k != nil && bytes.HasPrefix(k, []byte(op.key)); k, _ = c.Seek([]byte(op.key)) {
					if err := b.Delete(k); err != nil {
						return err
					}
				}
			case last[op.key] != i:
				// superseded later in the batch
			case op.val == nil:
				if err := b.Delete([]byte(op.key)); err != nil {
					return err
				}
			default:
				if err := b.Put([]byte(op.key), op.val); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
