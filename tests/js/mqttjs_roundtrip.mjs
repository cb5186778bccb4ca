// MQTT.js in Node over ws:// or wss://: a subscriber and a publisher, QoS 1
// and QoS 2 round trips with a binary payload. Run by server/tests/tls_ws.rs:
//
//   node mqttjs_roundtrip.mjs <url> [<ca.pem>]
//
// Prints one JSON line per received message, then "ok"; exits 0 on
// success, 1 on an error, 2 when it takes longer than 15 s.
import fs from 'node:fs';
import mqtt from 'mqtt';

const [url, caPath] = process.argv.slice(2);
if (!url) {
  console.error('usage: node mqttjs_roundtrip.mjs <url> [<ca.pem>]');
  process.exit(1);
}
const timer = setTimeout(() => {
  console.error('timed out');
  process.exit(2);
}, 15000);

const id = `${process.pid}-${Date.now()}`;
const options = {
  protocolVersion: 4,
  reconnectPeriod: 0,
  connectTimeout: 5000,
  clean: true,
};
if (caPath) options.ca = fs.readFileSync(caPath);

// Every byte value, so that a text conversion anywhere would show.
const payload = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

async function main() {
  const sub = await mqtt.connectAsync(url, { ...options, clientId: `js-sub-${id}` });
  const pub = await mqtt.connectAsync(url, { ...options, clientId: `js-pub-${id}` });
  const received = [];
  let wake = () => {};
  sub.on('message', (topic, message, packet) => {
    received.push({ topic, qos: packet.qos, same: Buffer.compare(message, payload) === 0 });
    wake();
  });
  const granted = await sub.subscribeAsync(`js/${id}/#`, { qos: 2 });
  if (granted.length !== 1 || granted[0].qos !== 2) {
    throw new Error(`unexpected SUBACK ${JSON.stringify(granted)}`);
  }
  // Resolved on PUBACK (QoS 1) and PUBCOMP (QoS 2).
  await pub.publishAsync(`js/${id}/q1`, payload, { qos: 1 });
  await pub.publishAsync(`js/${id}/q2`, payload, { qos: 2 });
  while (received.length < 2) {
    await new Promise((resolve) => {
      wake = resolve;
    });
  }
  received.sort((a, b) => a.topic.localeCompare(b.topic));
  for (const message of received) console.log(JSON.stringify(message));
  const expected = [
    { topic: `js/${id}/q1`, qos: 1, same: true },
    { topic: `js/${id}/q2`, qos: 2, same: true },
  ];
  if (JSON.stringify(received) !== JSON.stringify(expected)) {
    throw new Error(`received ${JSON.stringify(received)}`);
  }
  await pub.endAsync();
  await sub.endAsync();
  console.log('ok');
}

main().then(
  () => {
    clearTimeout(timer);
    process.exit(0);
  },
  (error) => {
    console.error(`error: ${error && error.stack ? error.stack : error}`);
    process.exit(1);
  },
);
