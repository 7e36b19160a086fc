package brokersys

// Handle records a $SYS message as if the broker had delivered it, for the tests.
func (c *Collector) Handle(topic string, payload []byte) { c.handle(topic, payload) }
