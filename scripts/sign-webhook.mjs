// Signs a webhook the way GitHub and Stripe do, with their own libraries, for the spine tests:
//   node sign-webhook.mjs github SECRET BODY  -> the X-Hub-Signature-256 value
//   node sign-webhook.mjs stripe SECRET BODY [UNIX_SECONDS]  -> a Stripe-Signature value (now by default)
// It runs from the folder holding node_modules (scripts/test.sh copies it there).
import { sign } from "@octokit/webhooks-methods";
import Stripe from "stripe";

const [provider, secret, body, timestamp] = process.argv.slice(2);
if (provider === "github") {
  console.log(await sign(secret, body));
} else if (provider === "stripe") {
  const stripe = new Stripe("sk_test_not_used");
  const at = timestamp === undefined ? undefined : Number(timestamp);
  console.log(stripe.webhooks.generateTestHeaderString({ payload: body, secret, timestamp: at }));
} else {
  console.error(`unknown provider ${provider}`);
  process.exit(2);
}
