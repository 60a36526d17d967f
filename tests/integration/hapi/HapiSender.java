// An interface engine's side of the HL7 feed, in HAPI HL7v2 (Java): parses each message
// file with HAPI's own parser (v2.5.1 structures), sends it over MLLP with HAPI's client
// (Initiator, Minimal Lower Layer Protocol) on one connection, parses the ACK that comes
// back, and prints one tab-separated line per message:
//   <file> <MSA-1> <MSA-2> <ACK structure> <ERR-2 segment^field> <ERR-3 code>
// Used by tests/integration/test_checkin_hl7_hapi.py, which compiles it with javac.
import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.app.Connection;
import ca.uhn.hl7v2.app.Initiator;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.model.v251.message.ACK;
import ca.uhn.hl7v2.model.v251.segment.ERR;
import ca.uhn.hl7v2.parser.PipeParser;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

public final class HapiSender {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        try (HapiContext context = new DefaultHapiContext()) {
            PipeParser parser = context.getPipeParser();
            Connection connection = context.newClient("127.0.0.1", port, false);
            Initiator initiator = connection.getInitiator();
            initiator.setTimeout(30, TimeUnit.SECONDS);
            for (int i = 1; i < args.length; i++) {
                String text = Files.readString(Path.of(args[i]), StandardCharsets.UTF_8);
                Message message = parser.parse(text);
                Message answer = initiator.sendAndReceive(message);
                String code = "", control = "", where = "", error = "";
                String structure = answer.getName();
                if (answer instanceof ACK) {
                    ACK ack = (ACK) answer;
                    code = ack.getMSA().getAcknowledgmentCode().getValue();
                    control = ack.getMSA().getMessageControlID().getValue();
                    if (ack.getERRReps() > 0) {
                        ERR err = ack.getERR(0);
                        where = err.getErrorLocation(0).getSegmentID().getValue() + "^"
                            + err.getErrorLocation(0).getFieldPosition().getValue();
                        error = err.getHL7ErrorCode().getIdentifier().getValue();
                    }
                }
                System.out.println(String.join("\t", Path.of(args[i]).getFileName().toString(),
                    code, control, structure, where, error == null ? "" : error));
            }
            connection.close();
        }
    }
}
